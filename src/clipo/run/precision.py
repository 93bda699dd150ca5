"""`trainer.precision`, decided once per phase: the `PrecisionPlan` every part reads.

Three decisions, made at the start of the run and never re-derived:
- sampling: the dtype the engine samples in. hf samples from weights cast once (a bf16 copy of the
  policy refreshed after each optimizer step), or from the policy's own weights as they are held,
  never through per-op autocast, which re-casts every weight at every decoding step; vllm holds its
  own weights in that dtype.
- training: the dtype of the training forward/backward (the update, and the collector's no-grad
  passes, which must match it for the ratio of an on-policy update to be exactly 1).
- holding: how the policy's weights are kept. `bf16-copy` keeps float32 master weights (what the
  optimizer steps, checkpoints hold, the export writes) and computes on a bf16 working copy cast
  once per update (`clipo.run.working_copy`): bf16's matrix rate without autocast's per-op casts,
  and without `bf16-true`'s rounding of the weights' updates (lr 1e-5 against weights of about 0.05
  is 100x below bf16's spacing there, so a bf16 optimizer step leaves them unchanged).

`auto`: float32 on a CPU without bf16 units (AVX-512 BF16 or AMX; emulated bf16 is several times
slower); on a CPU with them, in one process, each phase in bf16 when the start-up measurement of
the run's own shapes (`clipo.run.precision_probe`) finds bf16 at most `BF16_WINS` of float32's time,
the update on the working copy; in several processes bf16 from the CPU kind alone (each rank would
measure its own ratios, and all must choose alike), the update under Lightning's bf16-mixed (the
copy's gradients would bypass DDP's reduction and ZeRO/FSDP's shards); on a CUDA device with bf16,
Lightning's bf16-mixed for training, vllm in bf16, hf from the policy's own weights (copies stay on
CPUs: not run on a GPU here). An explicit `trainer.precision` wins. The choice functions are pure:
tests hand them any machine and any measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from clipo.run.precision_probe import Probe

# the precisions Lightning's Trainer accepts (as strings; the config may give 32 or 16 as integers)
LIGHTNING_PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                        "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")
# clipo's own: float32 master weights with a bf16 working copy (one process)
WORKING_COPY = "bf16-copy"
PRECISIONS = ("auto", WORKING_COPY, *LIGHTNING_PRECISIONS)
# CPU features with native bf16 matrix products; without them bf16 is emulated and slower than fp32
# (an Ice Lake Xeon with plain AVX-512: 68 GFLOP/s in bf16 against 355 in fp32)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# a phase runs in bf16 when the probe finds it at most this fraction of float32's time (a margin
# against the probe's noise: repeated probes on a shared 2-core AMX Xeon spread by about +-0.05)
BF16_WINS = 0.9
FP32, BF16 = "float32", "bfloat16"


@dataclass(frozen=True)
class PrecisionPlan:
    """What each phase computes in, how the policy is held, and why (the run's first lines, summary.json).

    lightning: the Trainer's `precision` (bf16-copy runs Lightning at 32-true: clipo casts, not autocast).
    sampling: the engine's sampling dtype (`float32`, `bfloat16`; `policy`: the policy's own, 16-bit
        precisions): vllm's weights; hf's where `sampler_copy`, else hf samples the policy's own weights.
    training: the training forward/backward's dtype (`bfloat16` also under autocast).
    working_copy: the update and the collector's passes run on a bf16 copy of float32 master weights.
    sampler_copy: the hf engine samples from a bf16 copy of the float32 policy (the working copy when
        there is one; a copy of its own otherwise).
    """

    requested: str
    lightning: str
    sampling: str
    training: str
    holding: str
    working_copy: bool
    sampler_copy: bool
    sampling_reason: str
    training_reason: str
    probe: Probe | None = None

    @property
    def value(self) -> str:
        """The precision in one word: Lightning's, or bf16-copy."""
        return WORKING_COPY if self.working_copy else self.lightning

    @property
    def reason(self) -> str:
        if self.sampling_reason == self.training_reason:
            return self.sampling_reason
        return f"sampling: {self.sampling_reason}; training: {self.training_reason}"

    def lines(self) -> list[str]:
        """The run's first lines about precision."""
        source = "a bf16 copy cast once per update" if self.sampler_copy else "the policy's own weights"
        lines = [f"precision {self.value}: {self.reason}",
                 f"precision per phase: sampling {self.sampling} (hf from {source}), training {self.training}, "
                 f"policy held as {self.holding}, Lightning precision {self.lightning}"]
        if self.probe is not None:
            lines.append(f"precision probe ({self.probe.seconds:.1f} s): bf16 took {self.probe.sampling:.2f} of "
                         f"fp32's time sampling, {self.probe.training:.2f} training; {self.probe.detail}")
        return lines

    def as_dict(self) -> dict[str, Any]:
        """summary.json's `runtime` entries."""
        return {"precision": self.value, "precision_reason": self.reason, "precision_requested": self.requested,
                "precision_lightning": self.lightning, "precision_sampling": self.sampling,
                "precision_training": self.training, "precision_holding": self.holding,
                "precision_sampler_copy": self.sampler_copy, **(self.probe.as_dict() if self.probe else {})}


def explicit_plan(requested: Any, processes: int = 1, copies: bool = True) -> PrecisionPlan:
    """The plan of a `trainer.precision` the user set (`copies`: see `choose_plan`)."""
    value, said = str(requested), f"trainer.precision={requested} was set explicitly"
    if value == WORKING_COPY:
        if processes > 1 or not copies:
            raise ValueError(f"trainer.precision={WORKING_COPY} trains in one process on the CPU (the copy's "
                             "gradients would bypass a strategy's reduction, and it stays on the CPU); use bf16-mixed")
        return _working_copy(value, BF16, said, said)
    if value in ("bf16-mixed", "bf16"):
        return _autocast(value, BF16, said, said, copies)
    if value == "bf16-true":
        return PrecisionPlan(value, value, BF16, BF16, "bfloat16 (the optimizer steps bf16 weights)", False, False,
                             said, said)
    if value in ("32", "32-true"):
        return PrecisionPlan(value, value, FP32, FP32, FP32, False, False, said, said)
    training = {"16": "float16", "64": "float64"}.get(value.split("-")[0], value)  # 16-mixed, 64-true, ...
    return PrecisionPlan(value, value, "policy", training, f"as Lightning's {value} holds it", False, False, said, said)


def choose_plan(requested: Any, accelerator: str, cuda_bf16: bool | None, cpu_flags: frozenset[str],
                processes: int, sharded: bool, measure: Callable[[], Probe]) -> PrecisionPlan:
    """`trainer.precision` as a plan, `auto` resolved for this machine (`measure` runs only where it decides).

    accelerator: trainer.accelerator; cuda_bf16: None when no CUDA device is visible, else whether it has
    bf16; cpu_flags: the `flags` of /proc/cpuinfo; processes: training processes of the run; sharded:
    the strategy holds the policy's weights (DeepSpeed, FSDP). A bf16 copy of the policy is made only where
    it can follow the policy: one unsharded policy on the CPU (Lightning moves the policy to a GPU after the
    copy is made, and the copy's move is not written yet).
    """
    on_cuda = cuda_bf16 is not None and accelerator in ("auto", "gpu", "cuda")
    copies = not sharded and not on_cuda
    if str(requested) != "auto":
        return explicit_plan(requested, processes, copies)
    if on_cuda:
        if cuda_bf16:
            why = "auto: the CUDA device has bf16"
            return _autocast("auto", BF16, why, f"{why}, Lightning's bf16-mixed", copies)
        return _fp32("auto: the CUDA device has no bf16 (16-mixed is never chosen automatically)")
    if accelerator not in ("auto", "cpu"):
        return _fp32(f"auto: trainer.accelerator={accelerator} is neither CPU nor CUDA")
    native = [flag for flag in CPU_BF16_FLAGS if flag in cpu_flags]
    if not native:
        return _fp32("auto: the CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated and slower")
    if processes > 1:  # every rank must choose alike: the CPU kind decides, not each rank's own measurement
        why = f"auto: the CPU has {', '.join(native)} ({processes} processes decide from the CPU kind)"
        return _autocast("auto", BF16, why, f"{why}; autocast in {processes} processes", copies)
    return plan_from_probe(measure(), ", ".join(native), processes, copies)


def plan_from_probe(probe: Probe, native: str, processes: int, copies: bool) -> PrecisionPlan:
    """`auto` on a CPU with bf16 units (`native`): each phase in bf16 where the probe finds it fast enough."""
    def verdict(ratio: float) -> tuple[str, str]:
        faster = ratio <= BF16_WINS
        words = f"auto: the CPU has {native}, bf16 measured {ratio:.2f} of fp32's time"
        return (BF16 if faster else FP32), words + ("" if faster else f" (above {BF16_WINS})")

    sampling, sampling_reason = verdict(probe.sampling)
    training, training_reason = verdict(probe.training)
    if training == BF16 and processes == 1 and copies:
        return _working_copy("auto", sampling, sampling_reason, training_reason, probe)
    if training == BF16:
        return _autocast("auto", sampling, sampling_reason, f"{training_reason}; autocast in {processes} processes",
                         copies, probe)
    return PrecisionPlan("auto", "32-true", sampling, FP32, FP32, False, sampling == BF16 and copies,
                         sampling_reason, training_reason, probe)


def _working_copy(requested: str, sampling: str, sampling_reason: str, training_reason: str,
                  probe: Probe | None = None) -> PrecisionPlan:
    return PrecisionPlan(requested, "32-true", sampling, BF16, "float32 master + bf16 working copy cast once per "
                         "update", True, sampling == BF16, sampling_reason, training_reason, probe)


def _autocast(requested: str, sampling: str, sampling_reason: str, training_reason: str, copies: bool,
              probe: Probe | None = None) -> PrecisionPlan:
    """Lightning's bf16-mixed for training; hf samples from a bf16 copy where one can be made, else from the
    policy's own weights (without autocast either way)."""
    return PrecisionPlan(requested, "bf16-mixed", sampling, BF16, "float32 (autocast casts per op)", False,
                         sampling == BF16 and copies, sampling_reason, training_reason, probe)


def _fp32(reason: str) -> PrecisionPlan:
    return PrecisionPlan("auto", "32-true", FP32, FP32, FP32, False, False, reason, reason)
