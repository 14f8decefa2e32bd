"""benchmarks/xla_profile.py reads per-operation times from jax.profiler traces.

The CPU path is checked on a real trace of this machine. The GPU path cannot run here; it is
checked on a trace written in the format of XLA's CUPTI collector (device plane
``/device:GPU:<n>``, kernel lines ``Stream #<id>(...)``, the launch annotation's keys as the
stats ``hlo_op``/``hlo_module`` of each kernel event), so that a GPU profile does not fail on
its first run.
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.profiler import ProfileData

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import xla_profile  # noqa: E402

_STATS = {"hlo_op": 1, "hlo_module": 2, "kernel_details": 3, "correlation_id": 4,
          "kernel_annotation": 5}


def _event(meta: int, offset_us: int, dur_us: int, **stats) -> str:
    fields = " ".join(
        f"stats {{ metadata_id: {_STATS[k]} "
        f"{'int64_value' if isinstance(v, int) else 'str_value'}: {v!r} }}".replace("'", '"')
        for k, v in stats.items())
    return (f"events {{ metadata_id: {meta} offset_ps: {offset_us * 10**6} "
            f"duration_ps: {dur_us * 10**6} {fields} }}")


def _plane(pid: int, name: str, lines: dict[str, list[str]], kernels: list[str]) -> str:
    body = " ".join(f'lines {{ id: {i} name: "{n}" timestamp_ns: 0 {" ".join(evs)} }}'
                    for i, (n, evs) in enumerate(lines.items()))
    meta = " ".join(f'event_metadata {{ key: {i + 1} value {{ id: {i + 1} name: "{k}" }} }}'
                    for i, k in enumerate(kernels))
    smeta = " ".join(f'stat_metadata {{ key: {i} value {{ id: {i} name: "{n}" }} }}'
                     for n, i in _STATS.items())
    return f'planes {{ id: {pid} name: "{name}" {body} {meta} {smeta} }}'


def _gpu_trace() -> ProfileData:
    step, other = "jit_train_step", "jit_other"
    kernels = ["loop_multiply_fusion", "sm90_xmma_fprop_implicit_gemm", "MemcpyD2D",
               "input_reduce_fusion"]
    device = _plane(1, "/device:GPU:0", {
        "Stream #13(Compute,MemcpyD2D)": [
            _event(1, 0, 5, hlo_op="fusion.1", hlo_module=step, kernel_details="regs:32"),
            _event(2, 10, 40, hlo_op="custom-call.3", hlo_module=step, correlation_id=7),
            _event(2, 60, 20, hlo_op="custom-call.3", hlo_module=step),  # 2nd kernel, same op
            _event(3, 90, 4, hlo_op="copy.2", hlo_module=step),  # memcpys carry the op too
            _event(4, 100, 9, hlo_op="fusion.9", hlo_module=other),  # another jit: left out
            # an older collector: only the annotation string
            _event(4, 120, 6, kernel_annotation="XlaModule:#hlo_module=jit_train_step,"
                   "program_id=3#::Thunk:#hlo_op=fusion.7,unique_hlo_op_id=9#"),
        ],
        "XLA Ops": [_event(1, 0, 5, hlo_op="fusion.1", hlo_module=step)],  # derived: skipped
        "CUPTI overhead": [_event(1, 0, 50, hlo_op="fusion.1", hlo_module=step)],
    }, kernels)
    host = _plane(2, "/host:CPU", {  # launch events: not kernel time
        "Host Threads/123": [_event(1, 0, 3, hlo_op="fusion.1", hlo_module=step)],
    }, kernels)
    return ProfileData.from_text_proto(f"{device} {host}")


def test_gpu_trace_counts_each_kernel_once_per_step():
    times = xla_profile.op_times(_gpu_trace().planes, gpu=True, module="train_step", steps=2)
    assert times == pytest.approx({"fusion.1": 2.5e-6, "custom-call.3": 30e-6,
                                   "copy.2": 2e-6, "fusion.7": 3e-6})


def test_cpu_reading_ignores_device_planes():
    assert xla_profile.op_times(_gpu_trace().planes, gpu=False, module="train_step") == {
        "fusion.1": pytest.approx(3e-6)}


def test_hlo_categories_of_gpu_style_instructions():
    hlo = """HloModule jit_train_step

%fused_q (p0: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  ROOT %floor.1 = f32[8,4]{1,0} floor(%p0)
}

%fused_r (p0: f32[8,4]) -> f32[4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[4]{0} reduce(%p0, %c), dimensions={0}, to_apply=%add
}

ENTRY %main (x: f32[8,4], w: f32[3,3,4,4]) -> f32[8,4] {
  %x = f32[8,4]{1,0} parameter(0)
  %custom-call.3 = (f32[8,4]{1,0}, u8[0]{0}) custom-call(%x), custom_call_target=CUDNN
  %fusion.1 = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_q
  %fusion.2 = f32[4]{0} fusion(%x), kind=kInput, calls=%fused_r
  ROOT %copy.2 = f32[8,4]{0,1} copy(%fusion.1)
}
"""
    cats = xla_profile.hlo_categories(hlo.replace("CUDNN", '"__cudnn$convForward"'))
    assert (cats["custom-call.3"], cats["fusion.1"], cats["fusion.2"], cats["copy.2"]) == (
        "conv/dot", "quantizer", "reduction", "layout")


def test_cpu_trace_of_a_jitted_step():
    def toy_step(x, w):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.floor(jax.nn.relu(y) * 4 + 0.5).sum()

    x, w = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 8))
    compiled = jax.jit(toy_step).lower(x, w).compile()

    def run(n: int) -> None:
        for _ in range(n):
            out = compiled(x, w)
        jax.block_until_ready(out)

    run(1)
    times = xla_profile.trace_ops(run, 3, module="toy_step")
    cats = xla_profile.hlo_categories(compiled.as_text())
    assert times and all(t > 0 for t in times.values())
    assert set(times) <= set(cats), "every traced operation is an instruction of the HLO"
    assert "conv/dot" in {cats[op] for op in times}
