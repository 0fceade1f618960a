"""
The cost side of the benchmark: each method's training-step time, peak memory and the distillation
loss's own forward + backward time, on one fixed pre-loaded batch, with random-init weights (timing
does not depend on them).

- Step time: forward, backward and optimizer step. All models are built first and timed in
  interleaved rounds (one step of each per round, after warm-up steps), so that a change of machine
  load hits all of them alike; a model's time is its median over the rounds. CUDA is synchronized
  around each step.
- Peak memory: what one model's training step peaks at with only its own state and the batch
  resident. On CUDA: its own state (parameters, gradients, optimizer buffers, the teacher's weights
  and buffers) + the batch + the most `torch.cuda.max_memory_allocated` rose above the memory
  allocated before any of its steps. On the CPU, where process RSS is too coarse, an estimate of
  the same peak, which comes at the end of the forward: its own state plus the unique storages
  autograd saves for backward during one training forward (`torch.autograd.graph.saved_tensors_hooks`);
  the teacher's no-grad activations are freed layer by layer and are left out.
- Loss time: the model's distillers alone (forward + backward) on fixed outputs: the teacher's
  (no grad) and the student's, detached and made leaves that require grad.
"""
import copy
import dataclasses
import gc
import os
import platform
import statistics
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from ..modeling.teacher_student import TeacherStudent, build_teacher_cfg
from .accuracy import FLOOR, MethodSpec

__all__ = [
    "CPU_MEMORY_MEASURE",
    "CUDA_MEMORY_MEASURE",
    "fixed_batch",
    "write_random_teacher",
    "time_calls",
    "saved_tensor_bytes",
    "state_bytes",
    "measure_costs",
    "machine_info",
]

CPU_MEMORY_MEASURE = (
    "cpu estimate: parameters + gradients + optimizer buffers + teacher weights, plus the unique "
    "storages saved for backward by one training forward (saved_tensors_hooks)"
)
CUDA_MEMORY_MEASURE = (
    "cuda: own state + batch + the largest rise of torch.cuda.max_memory_allocated during a timed step"
)
# DenseOutputs fields through which a distiller's gradient reaches the student
_GRAD_FIELDS = ("features", "cls_logits", "boxes", "box_logits")


def fixed_batch(
    cfg: CfgNode, num_images: int, image_size: Optional[Tuple[int, int]] = None, device="cpu"
) -> List[Dict]:
    """
    The first `num_images` images of DATASETS.TRAIN[0] that hold objects, mapped for training
    without random augmentation: resized to exactly `image_size` (h, w), else shortest edge
    max(INPUT.MIN_SIZE_TRAIN) capped at INPUT.MAX_SIZE_TRAIN; with MODEL.MASK_ON the instance masks too;
    tensors already on `device`.
    """
    name = cfg.DATASETS.TRAIN[0]
    dicts = [d for d in DatasetCatalog.get(name) if d.get("annotations")][:num_images]
    if len(dicts) < num_images:
        raise ValueError(f"dataset {name} has {len(dicts)} images with objects; the cost batch "
                         f"needs {num_images}")
    if image_size is not None:
        aug = [T.Resize(tuple(image_size))]
    else:
        aug = [T.ResizeShortestEdge(max(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN)]
    mapper = DatasetMapper(is_train=True, augmentations=aug, image_format=cfg.INPUT.FORMAT,
                           use_instance_mask=cfg.MODEL.MASK_ON, instance_mask_format=cfg.INPUT.MASK_FORMAT)
    batch = [mapper(copy.deepcopy(d)) for d in dicts]
    for b in batch:
        b["image"] = b["image"].to(device)
        b["instances"] = b["instances"].to(device)
    return batch


def write_random_teacher(cfg: CfgNode) -> str:
    """Save a random-init teacher (built from cfg's MODEL.TEACHER config, seed 0) to
    cfg.MODEL.TEACHER.WEIGHTS, so that a TeacherStudent can be built for timing."""
    tcfg = build_teacher_cfg(cfg)
    tcfg.MODEL.DEVICE = "cpu"
    seed_all_rng(0)
    path = cfg.MODEL.TEACHER.WEIGHTS
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"model": build_model(tcfg).state_dict()}, path)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], None], warmup: int, iters: int, device: torch.device) -> List[float]:
    """Seconds of each of `iters` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _storage_key(t: torch.Tensor) -> Tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the unique storages autograd saves for backward while `fn` runs (storages of
    `exclude`, e.g. parameters, left out); the graph is dropped afterwards."""
    skip = {_storage_key(t)[0] for t in exclude}
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage_key(t)
        if ptr and ptr not in skip:
            seen[ptr] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def _model_tensors(model: nn.Module) -> List[torch.Tensor]:
    modules = [model] + ([model.teacher] if isinstance(model, TeacherStudent) else [])
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the unique storages of parameters, buffers and gradients (teacher included) and of
    the optimizer's state tensors."""
    seen = {}
    tensors = _model_tensors(model)
    tensors += [t.grad for t in tensors if t.grad is not None]
    tensors += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    for t in tensors:
        ptr, nbytes = _storage_key(t)
        if ptr:
            seen[ptr] = nbytes
    return sum(seen.values())


def _batch_bytes(batch: List[Dict]) -> int:
    return sum(b["image"].untyped_storage().nbytes() for b in batch)


class _Bench:
    """One model under measurement: its training step and, for a TeacherStudent with distillers,
    the distillers' own forward + backward on fixed outputs; times and CUDA peaks accumulate."""

    def __init__(self, cfg: CfgNode, batch: List[Dict]):
        from ..engine import TIDTrainer

        seed_all_rng(0)
        self.model = build_model(cfg)
        self.model.train()
        self.optimizer = TIDTrainer.build_optimizer(cfg, self.model)
        for group in self.optimizer.param_groups:
            group["lr"] *= cfg.SOLVER.WARMUP_FACTOR  # the first warm-up step's: sane values on a fixed batch
        self.batch = batch
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.has_loss = isinstance(self.model, TeacherStudent) and len(self.model.distillers) > 0
        self.loss_step = _distill_loss_step(self.model, batch) if self.has_loss else None
        self.step_times: List[float] = []
        self.loss_times: List[float] = []
        self.cuda_extra = 0  # most memory one step allocated beyond what was resident before it

    def step(self) -> None:
        loss = sum(self.model(self.batch).values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def warmup(self, n: int) -> None:
        for _ in range(n):
            self.step()
            if self.has_loss:
                self.loss_step()

    def timed_round(self) -> None:
        on_cuda = self.device.type == "cuda"
        if on_cuda:
            _sync(self.device)
            resident = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.step_times += time_calls(self.step, 0, 1, self.device)
        if on_cuda:
            extra = torch.cuda.max_memory_allocated(self.device) - resident
            self.cuda_extra = max(self.cuda_extra, extra)
        if self.has_loss:
            self.loss_times += time_calls(self.loss_step, 0, 1, self.device)

    def summary(self) -> Dict:
        out = {
            "state_bytes": state_bytes(self.model, self.optimizer),
            "saved_bytes": saved_tensor_bytes(lambda: sum(self.model(self.batch).values()),
                                              _model_tensors(self.model)),
        }
        if self.device.type == "cuda":
            out["peak_mem_bytes"] = out["state_bytes"] + _batch_bytes(self.batch) + self.cuda_extra
        else:
            out["peak_mem_bytes"] = out["state_bytes"] + out["saved_bytes"]
        out["step_time_s"] = statistics.median(self.step_times)
        out["step_time_min_s"] = min(self.step_times)
        out["step_times_s"] = self.step_times
        if self.loss_times:
            out["loss_time_s"] = statistics.median(self.loss_times)
        return out


def _distill_loss_step(model: TeacherStudent, batch: List[Dict]) -> Callable[[], None]:
    """Forward + backward of the distillers alone on fixed teacher/student outputs."""
    with torch.no_grad(), EventStorage(0):
        _, student = model.student.forward_distill(batch)
        targets = model.student.gt_instances(batch)
        teacher = model.teacher.dense_outputs(model.teacher_inputs(batch), targets)
    student = student.detach()
    leaves = {
        name: [x.requires_grad_() for x in getattr(student, name)]
        for name in _GRAD_FIELDS
        if getattr(student, name) is not None
    }
    student = dataclasses.replace(student, **leaves)
    grads = [x for xs in leaves.values() for x in xs] + list(model.distillers.parameters())

    def step():
        for x in grads:
            x.grad = None
        losses = {}
        for distiller in model.distillers.values():
            losses.update(distiller(teacher, student, targets))
        loss = sum(losses.values())
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()

    return step


def measure_costs(
    make_cfg: Callable[[str, Optional[MethodSpec]], CfgNode],
    specs: Sequence[MethodSpec],
    *,
    warmup: int,
    iters: int,
    num_images: Optional[int] = None,
    image_size: Optional[Tuple[int, int]] = None,
    log: Callable[[str], None] = print,
) -> Dict:
    """
    Cost of the plain student, the floor (student step + teacher no-grad forward, no distiller) and
    every spec, all on one batch of `num_images` (default: SOLVER.IMS_PER_BATCH) in this one call.
    All models are built first and timed in `iters` interleaved rounds (one step each per round,
    after `warmup` steps each), so that a change of machine load hits them alike; each time is the
    median over the rounds. `make_cfg(role, spec)` gives the config of role "student" or "distill";
    a random-init teacher is written to the distill configs' MODEL.TEACHER.WEIGHTS.
    Returns {"student": {...}, "floor": {...}, "methods": {name: {...}}, ...} with step_time_s,
    peak_mem_bytes (see the module docstring), state_bytes, saved_bytes, loss_time_s (distillers).
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"cost iterations must be >= 1 and warm-up >= 0, got {iters} / {warmup}")
    student_cfg = make_cfg("student", None)
    device = torch.device(student_cfg.MODEL.DEVICE)
    batch = fixed_batch(student_cfg, num_images or student_cfg.SOLVER.IMS_PER_BATCH, image_size, device)
    write_random_teacher(make_cfg("distill", FLOOR))
    out = {
        "device": str(device),
        "batch_image_sizes": [list(b["image"].shape[-2:]) for b in batch],
        "warmup": warmup,
        "iters": iters,
        "memory_measure": CUDA_MEMORY_MEASURE if device.type == "cuda" else CPU_MEMORY_MEASURE,
        "load_before": _loadavg(),
    }
    cfgs = {"student": student_cfg, "floor": make_cfg("distill", FLOOR)}
    cfgs.update((s.name, make_cfg("distill", s)) for s in specs)
    with EventStorage(0):
        benches = {name: _Bench(cfg, batch) for name, cfg in cfgs.items()}
        for b in benches.values():
            b.warmup(warmup)
        for _ in range(iters):
            for b in benches.values():
                b.timed_round()
        measured = {name: b.summary() for name, b in benches.items()}
    del benches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    out["load_after"] = _loadavg()
    for name, m in measured.items():
        log(f"cost [{device}] {name}: {1000 * m['step_time_s']:.1f} ms/step, "
            f"{m['peak_mem_bytes'] / 2**20:.1f} MiB")
    out["student"] = measured.pop("student")
    out["floor"] = measured.pop("floor")
    out["methods"] = measured
    return out


def _loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> Dict:
    """What the timings ran on."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg": _loadavg(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
