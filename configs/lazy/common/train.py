"""Training options read by projects/TID/lazy_train_net.py: Detectron2's common/train.py plus the
checkpoint period, evaluation period and seed of configs/Base-Dense.yaml."""
from detectron2 import model_zoo

train = model_zoo.get_config("common/train.py").train
train.max_iter = 90000
train.checkpointer.period = 10000
train.eval_period = 0  # TEST.EVAL_PERIOD
train.seed = -1  # SEED: < 0 draws a random seed
