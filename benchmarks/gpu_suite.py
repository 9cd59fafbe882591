r"""The GPU suite of issue 30: every recurrent mixer, one layer, on one GPU, in one short run.

Per mixer and length (bf16, no grad, batch 4, d_model 1024, T = 2048 and 8192)::

    forward_ms            probe's forward, no hook (the fused library kernel where probe.ops.fused has one)
    pytorch_ms            the same forward with fused kernels off (only where a kernel exists)
    reference_ms          the maintained library's own layer for the recurrence, where one is wired below
    capture_ms            every hook_state* captured (what run_with_cache does)
    positions_ms          the states at 8 positions kept (what run_with_cache(state_positions=...) does: the
                          forward in the pieces the positions cut, probe.mixers.state_positions)
    write_ms              one copy of the captured states' bytes (the cost of writing them)
    forward_peak_mb / capture_peak_mb / positions_peak_mb   CUDA allocator peak above the inputs and weights
    states_mb / outputs_mb              sizes of every per-position state and of the output

and the issue's targets judged per row: ``forward <= 1.5 x reference``, ``capture <= 2 x (forward +
write)``, and for the LMU ``forward peak <= 4 x (outputs + states)``. Writes ``gpu.json`` and ``gpu.md``
into ``--out`` (default ``benchmarks/results``). Sized to finish within about four minutes on an H200
(``--budget-s`` stops early, naming what it skipped). Without a CUDA device it says so and exits with
status 2; ``--device cpu --quick`` runs the same logic with tiny shapes (tests/test_benchmarks.py).

Usage: python benchmarks/gpu_suite.py [--out DIR] [--mixers hgrn2,mamba] [--lengths 2048,8192]
       python benchmarks/gpu_suite.py --device cpu --d-model 128 --batch 1 --lengths 1024   (the CPU table)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import probe  # noqa: E402
from probe.mixers import MIXERS  # noqa: E402
from probe.mixers.base import RecurrentMixer  # noqa: E402
from probe.mixers.state_positions import is_state_quantity, states_at  # noqa: E402
from probe.ops.fused import fused_disabled  # noqa: E402

#: mixers with a fused kernel behind probe.ops.fused (their PyTorch form is timed too)
FUSED = {"hgrn2", "mamba", "mamba2", "gdn", "kda", "rglru", "qrnn", "rwkv", "rwkv7", "mlstm", "slstm"}
#: options giving the shapes of the issue's table (Mamba-2: mamba-ssm's Mamba2 defaults; the delta rules:
#: 8 heads of 128, fla's KDA default head width)
OPTIONS = {"hgrn2": {"expand_ratio": 128}, "mamba": {"d_state": 16, "expand": 2},
           "mamba2": {"d_state": 128, "head_dim": 64, "expand": 2},
           "gdn": {"n_k_heads": 8, "d_k": 128}, "kda": {"n_k_heads": 8, "d_k": 128}}


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    d_model: int
    lengths: tuple[int, ...]
    positions: int
    repeats: int
    issue_options: bool  # the mixer options of the issue's table (OPTIONS); False: each mixer's defaults


FULL = Shape(batch=4, d_model=1024, lengths=(2048, 8192), positions=8, repeats=3, issue_options=True)
QUICK = Shape(batch=1, d_model=32, lengths=(16, 32), positions=4, repeats=1, issue_options=False)


def recurrent_mixers() -> list[str]:
    """Every registered recurrent mixer, those the issue's table names first (the budget may cut the tail)."""
    names = [name for name, cls in MIXERS.items() if isinstance(cls, type) and issubclass(cls, RecurrentMixer)]
    first = [n for n in ("hgrn2", "mamba", "lmu", "lstm", "mlstm", "rwkv", "qrnn") if n in names]
    last = [n for n in ("slstm",) if n in names]
    return first + [n for n in names if n not in first + last] + last


def build_mixer(name: str, shape: Shape, device, dtype):
    d_head = 128 if shape.d_model >= 128 else shape.d_model // 2
    cfg = probe.ModelConfig(vocab_size=256, d_model=shape.d_model, d_head=d_head, layout=[name],
                            mixer_options={name: OPTIONS[name]} if name in OPTIONS and shape.issue_options else {})
    return MIXERS[name](cfg, 0).to(device=device, dtype=dtype).eval()


# -- references: the maintained libraries' layers ---------------------------------------------------------
def reference_layer(name: str, shape: Shape, device, dtype):
    """``(label, callable x -> y)`` of the library layer for this recurrence, or ``(reason, None)``."""
    d = shape.d_model
    try:
        if name == "hgrn2":
            from fla.layers import HGRN2Attention

            expand = OPTIONS["hgrn2"]["expand_ratio"] if shape.issue_options else build_mixer(name, shape, "cpu", dtype).e
            layer = HGRN2Attention(mode="chunk", hidden_size=d, expand_ratio=expand, layer_idx=0)
            return "fla HGRN2Attention(mode='chunk')", _module(layer, device, dtype, lambda m, x: m(x)[0])
        if name == "mamba":
            from mamba_ssm import Mamba as MambaRef

            layer = MambaRef(d_model=d, d_state=16, d_conv=4, expand=2)
            return "mamba_ssm Mamba (selective_scan_fn + causal_conv1d)", _module(layer, device, dtype, lambda m, x: m(x))
        if name == "mamba2":
            from mamba_ssm import Mamba2 as Mamba2Ref

            mine = build_mixer(name, shape, "cpu", dtype)  # the same widths as probe's layer
            layer = Mamba2Ref(d_model=d, d_state=mine.d_state, d_conv=mine.d_conv, expand=mine.d_inner // d,
                              headdim=mine.head_dim, ngroups=mine.groups)
            return "mamba_ssm Mamba2 (its fused conv + scan path)", _module(layer, device, dtype, lambda m, x: m(x))
        if name in ("gdn", "kda"):
            from fla.layers import GatedDeltaNet, KimiDeltaAttention

            mine = build_mixer(name, shape, "cpu", dtype)
            layer = (GatedDeltaNet if name == "gdn" else KimiDeltaAttention)(
                hidden_size=d, head_dim=mine.K, num_heads=mine.Hk, num_v_heads=mine.Hv, expand_v=mine.V / mine.K,
                mode="chunk", layer_idx=0)
            return f"fla {type(layer).__name__}(mode='chunk')", _module(layer, device, dtype, lambda m, x: m(x)[0])
        if name == "lstm":
            layer = torch.nn.LSTM(d, d, batch_first=True)
            return "torch nn.LSTM (cuDNN)", _module(layer, device, dtype, lambda m, x: m(x)[0])
        if name in ("rglru", "qrnn"):  # the same elementwise gated recurrence, with its projections
            from fla.layers import HGRNAttention

            layer = HGRNAttention(mode="chunk", hidden_size=d, expand_ratio=1, layer_idx=0)
            return "fla HGRNAttention(mode='chunk')", _module(layer, device, dtype, lambda m, x: m(x)[0])
        if name == "rwkv7":
            from fla.layers import RWKV7Attention

            mine = build_mixer(name, shape, "cpu", dtype)
            layer = RWKV7Attention(mode="chunk", hidden_size=d, head_dim=mine.K, layer_idx=0)
            return "fla RWKV7Attention(mode='chunk')", _module(layer, device, dtype, lambda m, x: m(x)[0])
        if name == "rwkv":  # no library layer: the kernel alone, on the shapes probe hands it
            from fla.ops.rwkv4 import fused_recurrent_rwkv4

            w, u = (torch.randn(d, device=device) for _ in range(2))
            state = torch.zeros(shape.batch, 3, 1, d, device=device)
            return ("fla fused_recurrent_rwkv4 alone (no projections)",
                    lambda x: fused_recurrent_rwkv4(w, u, x.float(), x.float(), state)[0])
        if name == "mlstm":
            from mlstm_kernels.torch.backend_module import mLSTMBackendConfig
            from xlstm.xlstm_large.model import mLSTMLayer, mLSTMLayerConfig

            mine = build_mixer(name, shape, "cpu", dtype)
            backend = mLSTMBackendConfig(chunkwise_kernel="chunkwise--triton_xl_chunk", mode="train",
                                         return_last_states=True, autocast_kernel_dtype="bfloat16")
            layer = mLSTMLayer(mLSTMLayerConfig(embedding_dim=d, num_heads=mine.n_heads, mlstm_backend=backend))
            return "xlstm mLSTMLayer (mlstm_kernels chunkwise--triton_xl_chunk)", _module(
                layer, device, dtype, lambda m, x: m(x)[0])
        if name == "slstm":
            from xlstm.blocks.slstm.layer import sLSTMLayer, sLSTMLayerConfig

            mine = build_mixer(name, shape, "cpu", dtype)
            layer = sLSTMLayer(sLSTMLayerConfig(embedding_dim=d, num_heads=mine.n_heads, backend="cuda"))
            return "xlstm sLSTMLayer(backend='cuda')", _module(layer, device, dtype, lambda m, x: m(x))
    except Exception as exc:  # the library is not installed or cannot run here: recorded, not fatal
        return f"unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", None
    return "none wired", None


def _module(layer, device, dtype, call):
    layer = layer.to(device=device, dtype=dtype).eval()
    return lambda x: call(layer, x)


# -- measurement --------------------------------------------------------------------------------------------
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


#: a warm-up run longer than this many seconds is timed once more instead of ``repeats`` times
SLOW_S = 0.5


def time_ms(fn, device, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after one warm-up run (one run when slow)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    if time.perf_counter() - start > SLOW_S:
        repeats = 1
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def peak_mb(fn, device) -> float | None:
    """CUDA allocator peak of ``fn()`` above what was allocated before it, in MiB (None on the CPU)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


class StateHooks:
    """Hooks on every ``hook_state*`` of a mixer keeping each tensor they receive; used as a context
    manager around the forward."""

    def __init__(self, mixer):
        self.points = [getattr(mixer, f"hook_{n}") for n in mixer.hooked_names() if is_state_quantity(n)]
        self.kept = []

    def _keep(self, tensor, hook):
        self.kept.append(tensor)

    def __enter__(self):
        self.kept = []
        for point in self.points:
            point.add_hook(self._keep)
        return self

    def __exit__(self, *exc):
        for point in self.points:
            point.remove_hooks("fwd")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.kept)


def measure(name: str, T: int, shape: Shape, device, dtype) -> dict:
    mixer = build_mixer(name, shape, device, dtype)
    x = torch.randn(shape.batch, T, shape.d_model, device=device, dtype=dtype)
    row = {"mixer": name, "T": T, "batch": shape.batch, "d_model": shape.d_model, "dtype": str(dtype)}

    def forward():
        return mixer(x)[0]

    row["forward_ms"] = time_ms(forward, device, shape.repeats)
    row["forward_peak_mb"] = peak_mb(forward, device)
    out = forward()
    row["outputs_mb"] = out.numel() * out.element_size() / 2**20
    if name in FUSED:
        with fused_disabled():
            row["pytorch_ms"] = time_ms(forward, device, shape.repeats)
    label, reference = reference_layer(name, shape, device, dtype)
    row["reference"] = label
    if reference is not None:
        try:
            row["reference_ms"] = time_ms(lambda: reference(x), device, shape.repeats)
        except Exception as exc:  # the library layer failed on these shapes: said in the row
            row["reference"] = f"{label} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    del out

    capture = StateHooks(mixer)

    def captured():
        with capture:
            return forward()

    row["capture_ms"] = time_ms(captured, device, shape.repeats)
    row["capture_peak_mb"] = peak_mb(captured, device)
    row["states_mb"] = capture.nbytes() / 2**20
    buffer = torch.empty(capture.nbytes(), dtype=torch.uint8, device=device)
    capture.kept = []
    row["write_ms"] = time_ms(lambda: buffer.clone(), device, shape.repeats)
    del buffer
    positions = sorted({int(p) for p in torch.linspace(0, T - 1, shape.positions)})
    at_positions = StateHooks(mixer)  # the hooks see the asked positions only (states_at)

    def kept_at_positions():
        with at_positions, states_at(positions):
            return forward()

    row["positions_ms"] = time_ms(kept_at_positions, device, shape.repeats)
    row["positions_peak_mb"] = peak_mb(kept_at_positions, device)
    return judge(row)


def judge(row: dict) -> dict:
    """The issue's targets for one row (None where a side was not measured)."""
    ref = row.get("reference_ms")
    row["forward_target_met"] = None if ref is None else row["forward_ms"] <= 1.5 * ref
    row["capture_target_met"] = row["capture_ms"] <= 2 * (row["forward_ms"] + row["write_ms"])
    if row["mixer"] == "lmu" and row.get("forward_peak_mb") is not None:
        peak = max(row["forward_peak_mb"], row["capture_peak_mb"])  # the capture's peak holds the states
        row["lmu_memory_ratio"] = peak / (row["outputs_mb"] + row["states_mb"])
        row["lmu_memory_target_met"] = row["lmu_memory_ratio"] <= 4
    return row


# -- the run ------------------------------------------------------------------------------------------------
def run(mixers: list[str], shape: Shape, device, dtype, budget_s: float) -> tuple[list[dict], list[str]]:
    rows, skipped, start = [], [], time.perf_counter()
    for T in shape.lengths:
        for name in mixers:
            if time.perf_counter() - start > budget_s:
                skipped.append(f"{name} T={T}")
                continue
            try:
                rows.append(measure(name, T, shape, device, dtype))
            except Exception as exc:  # an out-of-memory or a kernel failure is a result, not the end of the run
                rows.append({"mixer": name, "T": T, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    return rows, skipped


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "met" if value else "missed"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


COLUMNS = ["mixer", "T", "forward_ms", "pytorch_ms", "reference_ms", "forward_target_met", "capture_ms",
           "write_ms", "capture_target_met", "positions_ms", "forward_peak_mb", "capture_peak_mb", "positions_peak_mb",
           "outputs_mb",
           "states_mb", "lmu_memory_ratio", "lmu_memory_target_met", "reference"]


def markdown(results: dict) -> str:
    lines = [f"# GPU suite ({results['machine']['device']}, {results['shape']})", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['mixer']} | {row['T']} | error: {row['error']} |")
        else:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    if results["skipped"]:
        lines += ["", "Skipped (time budget): " + ", ".join(results["skipped"])]
    return "\n".join(lines) + "\n"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a smoke test of the logic)")
    p.add_argument("--quick", action="store_true", help="tiny shapes (batch 1, d_model 32, T 16 and 32)")
    p.add_argument("--mixers", default=None, help="comma-separated mixer names (default: every recurrent mixer)")
    p.add_argument("--lengths", default=None, help="comma-separated sequence lengths (default 2048,8192)")
    p.add_argument("--d-model", type=int, default=None,
                   help="another width (each mixer's default options then: the issue's assume 1024)")
    p.add_argument("--batch", type=int, default=None, help="another batch size (default 4)")
    p.add_argument("--budget-s", type=float, default=170.0, help="stop starting new rows after this many seconds")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device visible; nothing measured (run it on a GPU machine, or --device cpu "
              "--quick to check its logic).", file=sys.stderr)
        return 2
    shape = QUICK if args.quick else FULL
    if args.lengths:
        shape = dataclasses.replace(shape, lengths=tuple(int(t) for t in args.lengths.split(",")))
    if args.d_model:
        shape = dataclasses.replace(shape, d_model=args.d_model, issue_options=False)
    if args.batch:
        shape = dataclasses.replace(shape, batch=args.batch)
    mixers = args.mixers.split(",") if args.mixers else recurrent_mixers()
    unknown = [m for m in mixers if m not in MIXERS]
    if unknown:
        print(f"gpu_suite: unknown mixer(s) {unknown}; known: {', '.join(recurrent_mixers())}", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.no_grad():
        rows, skipped = run(mixers, shape, args.device, dtype, args.budget_s)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"
    results = {"machine": {"device": device_name, "torch": torch.__version__}, "quick": args.quick,
               "shape": f"batch {shape.batch}, d_model {shape.d_model}, {str(dtype).replace('torch.', '')}, no grad",
               "rows": rows, "skipped": skipped}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu" if args.device == "cuda" else f"gpu-{args.device}"
    stem += "-quick" if args.quick else ""
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
