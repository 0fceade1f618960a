"""SGD as configs/Base-Dense.yaml sets it (SOLVER.*): lr 0.01, momentum 0.9, weight decay 1e-4,
none on norm layers."""
from detectron2 import model_zoo

SGD = model_zoo.get_config("common/optim.py").SGD
SGD.lr = 0.01
SGD.weight_decay = 1e-4
