"""End to end on the tiny dataset: a GFL overfits and COCO evaluation sees it; train_net.py trains,
evaluates and resumes; checkpoints round-trip."""
import copy
import json
import os

import pytest
import torch

import detectron2.data.transforms as T
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg, tiny_run_opts
from test_lazy_config import copypaste_numbers, run_script
from tid_d2.data import register_shapes
from tid_d2.engine import TIDTrainer

OVERFIT_NAME = "tid_shapes_tiny4_train"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one intra-op thread is as fast alone, and far faster on a shared CPU."""
    torch.set_num_threads(1)


def shapes_root(dataset_name: str) -> str:
    """The datasets root a tid_shapes variant was registered under."""
    json_file = MetadataCatalog.get(dataset_name).json_file
    return os.path.dirname(os.path.dirname(os.path.dirname(json_file)))


def annotated_batch(dataset_name: str, n: int):
    """The first `n` images with objects, short side 128, no flip."""
    dicts = [d for d in DatasetCatalog.get(dataset_name) if d["annotations"]][:n]
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(128, 192)], image_format="BGR"
    )
    return [mapper(d) for d in dicts]


def test_small_gfl_overfits_four_images(tiny_shapes, tmp_path):
    """100 iterations on 4 images (one without objects), evaluated on the same 4 with COCOEvaluator
    through TIDTrainer.test: AP50 80-87 (the 6 x 9 px ellipse has no anchor centre inside it);
    a fresh model detects nothing."""
    if OVERFIT_NAME not in DatasetCatalog:
        register_shapes(
            OVERFIT_NAME, "train", root=shapes_root(tiny_shapes[0]), num_images=4, sides=(128, 192)
        )
    cfg = quickstart_cfg(
        "GFL-student",
        "DATASETS.TRAIN", f"('{OVERFIT_NAME}',)",
        "DATASETS.TEST", f"('{OVERFIT_NAME}',)",
        "INPUT.RANDOM_FLIP", "none",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.BASE_LR", "0.02",
        "SOLVER.WARMUP_ITERS", "10",
        "SOLVER.MAX_ITER", "100",
        "SOLVER.CHECKPOINT_PERIOD", "1000",
        "OUTPUT_DIR", str(tmp_path),
    )
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    fresh = TIDTrainer.test(cfg, copy.deepcopy(trainer.model))["bbox"]["AP50"]
    assert not fresh >= 1.0  # NaN: no detection above the score threshold
    trainer.train()
    ap50 = TIDTrainer.test(cfg, trainer.model)["bbox"]["AP50"]
    assert ap50 > 60.0, ap50


def test_checkpoint_round_trip(tiny_shapes, tmp_path):
    """Save a trained model with DetectionCheckpointer, load it into a fresh one: same weights,
    same BN statistics, same outputs."""
    cfg = quickstart_cfg("GFL-student")
    model = TIDTrainer.build_model(cfg)
    batch = annotated_batch(tiny_shapes[0], 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for _ in range(2):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("ckpt", iteration=1)

    torch.manual_seed(1)
    fresh = TIDTrainer.build_model(cfg)
    model.eval()
    fresh.eval()
    inputs = [{"image": x["image"]} for x in batch]
    with torch.no_grad():
        before = fresh.head(fresh.extract_features(fresh.preprocess_image(inputs)))
        checkpoint = DetectionCheckpointer(fresh).load(str(tmp_path / "ckpt.pth"))
        after, reference = fresh.head(fresh.extract_features(fresh.preprocess_image(inputs))), model.head(model.extract_features(model.preprocess_image(inputs)))
    assert checkpoint["iteration"] == 1
    assert not torch.equal(before[1][0], reference[1][0])
    for a, r in zip(after, reference):
        assert all(torch.equal(x, y) for x, y in zip(a, r))
    state, ref = fresh.state_dict(), model.state_dict()
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)


def test_train_net_trains_evaluates_and_resumes(tiny_shapes, tmp_path):
    """projects/TID/train_net.py: 3 iterations (evaluated after training), --eval-only on the final
    checkpoint (the same detections), --resume to 5 iterations continues at iteration 3."""
    train_name, val_name = tiny_shapes
    out = tmp_path / "out"
    args = [
        "--config-file", os.path.join(REPO, "configs", "quickstart", "GFL-student.yaml"),
        *tiny_run_opts(train_name, val_name),
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "MODEL.GFL.SCORE_THRESH_TEST", "0.0",  # an untrained model still yields detections
        "OUTPUT_DIR", str(out),
    ]
    log = run_script("train_net.py", args + ["SOLVER.MAX_ITER", "3"], tiny_shapes, tmp_path)
    assert {"model_0000001.pth", "model_final.pth", "last_checkpoint"} <= set(os.listdir(out))
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 2
    trained = copypaste_numbers(log)
    assert len(trained) == 1 and trained[0].split(",")[0] != "nan"  # AP of some detections
    predictions = out / "inference" / val_name / "coco_instances_results.json"
    after_training = json.loads(predictions.read_text())
    assert len(after_training) == 8 * 100

    eval_args = ["--eval-only"] + args + ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    log = run_script("train_net.py", eval_args, tiny_shapes, tmp_path)
    assert copypaste_numbers(log) == trained
    assert json.loads(predictions.read_text()) == after_training  # the same detections

    resume_args = ["--resume"] + args + ["SOLVER.MAX_ITER", "5"]
    log = run_script("train_net.py", resume_args, tiny_shapes, tmp_path)
    assert "Starting training from iteration 3" in log
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 4
