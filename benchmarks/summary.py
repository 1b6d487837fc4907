"""The benchmark results: targets checked against the measurements, and the markdown summary."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

# (name, device type or None for any, how to read the values from the results, comparison, threshold);
# a reader returns (mode or None, value) pairs: the per-mode parts give one value per mode
Target = tuple[str, str | None, Callable[[dict[str, Any]], list[tuple[str | None, float]]], str, float]


def _evit_half(results: dict[str, Any]) -> list[tuple[str | None, float]]:
    rows = results.get("pruning", [])
    return [(r.get("mode"), r["efficiency"]) for r in rows if r["method"] == "evit" and r["keep_rate"] == 0.5]


def _teacher_half(results: dict[str, Any]) -> list[tuple[str | None, float]]:
    return [(r.get("mode"), r["time_ratio"]) for r in results.get("teacher", []) if r["keep_ratio"] == 0.5]


def _engine(results: dict[str, Any]) -> list[tuple[str | None, float]]:
    value = results.get("engine", {}).get("engine_over_plain")
    return [] if value is None else [(None, value)]


def _orchestration(results: dict[str, Any]) -> list[tuple[str | None, float]]:
    value = results.get("orchestration", {}).get("overhead_fraction")
    return [] if value is None else [(None, value)]


def _loader(*path: str) -> Callable[[dict[str, Any]], list[tuple[str | None, float]]]:
    def read(results: dict[str, Any]) -> list[tuple[str | None, float]]:
        value = results.get("loader", {})
        for key in path:
            value = value.get(key, {})
        return [] if value == {} else [(None, value)]

    return read


TARGETS: list[Target] = [
    ("EViT keep 0.5: efficiency (measured / theoretical speed-up)", "cpu", _evit_half, ">=", 0.9),
    ("EViT keep 0.5: efficiency (measured / theoretical speed-up)", "cuda", _evit_half, ">=", 0.95),
    ("MaskedKD teacher at keep 0.5: time / keep-1.0 time", None, _teacher_half, "<=", 0.55),
    ("training engine img/s / plain loop img/s", None, _engine, ">=", 1.0),
    ("orchestration overhead / pipeline wall time", None, _orchestration, "<=", 0.05),
    (
        "loader: 500x375 JPEG decode + crop to 224, img/s per core",
        "cpu",
        _loader("decode", "img_per_s_per_core"),
        ">=",
        350,
    ),
    (
        "training fed by the loader (2 workers) / fed from memory",
        None,
        _loader("feed", "workers_2", "loader_over_memory"),
        ">=",
        0.95,
    ),
]


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target that applies to this device and was measured (per mode): its value and whether it is met."""
    device = results["device"]["type"]
    checked = []
    for name, applies_to, read, op, threshold in TARGETS:
        if applies_to not in (None, device):
            continue
        for mode, value in read(results):
            met = value >= threshold if op == ">=" else value <= threshold
            target = f"{name} [{mode}]" if mode else name
            checked.append({"target": target, "required": f"{op} {threshold}", "value": value, "met": met})
    return checked


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    frame = pd.DataFrame(rows)
    return frame[[c for c in columns if c in frame]].to_markdown(index=False, floatfmt=".4g")


def markdown(results: dict[str, Any]) -> str:
    setup, device = results["setup"], results["device"]
    lines = [
        f"# Benchmarks: {device['name']}",
        "",
        f"torch {device['torch']}, timm {device['timm']}, profile `{setup['profile']}`, batch {setup['batch']}, "
        f"{setup['dtype']}, {setup['threads']} threads, warm-up {setup['warmup']}, {setup['repeats']} repeats, "
        f"modes {', '.join(setup.get('modes', ['eager']))}. {setup['timing']}.",
        "",
    ]
    if setup.get("preset"):
        lines[2] = (
            f"Preset `{setup['preset']}`: {setup['student']['name']} / {setup['teacher']['name']} at "
            f"{setup['student']['img_size']} px. " + lines[2]
        )
    if results.get("targets"):
        lines += ["## Targets", "", _table(results["targets"], ["target", "required", "value", "met"]), ""]
    if "pruning" in results:
        lines += [
            "## 1. Pruned inference vs the unpruned student",
            "",
            _table(
                results["pruning"],
                [
                    "mode",
                    "method",
                    "keep_rate",
                    "tome_schedule",
                    "gmacs",
                    "gmacs_ratio",
                    "img_per_s",
                    "img_per_s_unpruned",
                    "theoretical_speedup",
                    "speedup",
                    "efficiency",
                    "aa_speedup",
                ],
            ),
            "",
            "`aa_speedup`: the unpruned model against itself in the same turns (A/A control; 1 = no bias).",
            "",
        ]
    if "teacher" in results:
        lines += [
            "## 2. MaskedKD teacher forward by keep ratio",
            "",
            _table(
                results["teacher"],
                [
                    "mode",
                    "keep_ratio",
                    "patches",
                    "gmacs",
                    "gmacs_ratio",
                    "img_per_s",
                    "time_ratio",
                    "speedup",
                    "aa_time_ratio",
                ],
            ),
            "",
            "`aa_time_ratio`: keep 1.0 against itself in the same turns (A/A control; 1 = no bias).",
            "",
        ]
    if "engine" in results:
        e = results["engine"]
        lines += [
            "## 3. Training engine vs a plain loop",
            "",
            f"{e['engine_img_per_s']:.1f} vs {e['plain_img_per_s']:.1f} img/s: **{e['engine_over_plain']:.3f}x** "
            f"(medians of {e['rounds']} alternating rounds of {e['steps_per_round']} steps at batch {e['batch']})",
            "",
        ]
    if "mae" in results:
        m = results["mae"]
        lines += [
            "## 4. MAE training step: mask ratio {:g} vs no masking".format(m["mask_ratio"]),
            "",
            _table(
                [
                    {
                        "part": "encoder",
                        "time_ratio": m["encoder_time_ratio"],
                        "flops_ratio": m["encoder_flops_ratio"],
                        "step_s": m["encoder_step_s"],
                        "step_s_unmasked": m["encoder_step_s_unmasked"],
                    },
                    {
                        "part": "MAE (encoder + decoder + loss)",
                        "time_ratio": m["mae_time_ratio"],
                        "flops_ratio": m["mae_flops_ratio"],
                        "step_s": m["mae_step_s"],
                        "step_s_unmasked": m["mae_step_s_unmasked"],
                    },
                ],
                ["part", "step_s", "step_s_unmasked", "time_ratio", "flops_ratio"],
            ),
            "",
        ]
    if "orchestration" in results:
        o = results["orchestration"]
        if "skipped" in o:
            lines += ["## 5. Orchestration overhead", "", f"Skipped: {o['skipped']}.", ""]
        else:
            lines += [
                f"## 5. Orchestration overhead ({o['profile']} profile)",
                "",
                _table(o["stages"], ["stage", "bare_s", "dvc_mlflow_s", "overhead_s"]),
                "",
                f"Bare {o['bare_total_s']:.1f} s; DVC + MLflow {o['dvc_mlflow_total_s']:.1f} s; Prefect flow "
                f"{o['prefect_total_s']:.1f} s; overhead {o['overhead_fraction']:.1%} of the flow's wall time. "
                f"{o['note']}.",
                "",
            ]
    if "precision" in results:
        p = results["precision"]
        native = p.get("native_bf16")
        lines += ["## 6. bf16 autocast against fp32", ""]
        if native is not None:
            flags = ", ".join(p["native_bf16_flags"]) or "none of amx_bf16, avx512_bf16"
            lines += [
                f"Native bf16 on this CPU: {'yes' if native else 'no'} ({flags}); `runtime.amp: auto` "
                f"uses bf16 for {'inference, fp32 for training' if native else 'nothing here'}.",
                "",
            ]
        lines += [
            "Inference (eval, inference mode):",
            "",
            _table(p["inference"], ["model", "batch", "fp32_img_per_s", "bf16_img_per_s", "bf16_speedup"]),
            "",
            "Training steps of the student (forward, backward, AdamW), img/s:",
            "",
            _table(p["training"], ["batch", "dtype", "channels_last", "compile", "img_per_s"]),
            "",
        ]
    if "loader" in results:
        d = results["loader"]["decode"]
        feeds = list(results["loader"]["feed"].values())
        lines += [
            "## 8. The sharded data path",
            "",
            f"Decode + random-resized crop to {d['crop']} of {d['images']} {d['source_size'][0]}x{d['source_size'][1]} "
            f"JPEGs on one core: **{d['img_per_s_per_core']:.0f} img/s** (A/A {d['aa_ratio']:.3f}); `prepare` of "
            f"them on every core: {d['prepare_img_per_s_per_core']:.0f} img/s per core. Training (batch "
            f"{feeds[0]['batch']}, medians of the rounds) fed by the loader against the same batches from memory:",
            "",
            _table(
                feeds,
                [
                    "workers",
                    "memory_img_per_s",
                    "loader_img_per_s",
                    "loader_over_memory",
                    "data_wait",
                    "aa_ratio",
                    "noisy",
                ],
            ),
            "",
        ]
    if "jobs" in results:
        j = results["jobs"]
        lines += ["## 7. Trainings at a time (the seed sweep's `--jobs`)", ""]
        if "skipped" in j:
            lines += [f"Skipped: {j['skipped']}.", ""]
        else:
            lines += [
                f"Student training steps (batch {j['batch']}, fp32), summed over the workers running at once, "
                f"medians of {j['rounds']} rounds of {j['steps']} steps: one job with {j['cores']} threads "
                f"{j['one_job_img_per_s']:.0f} img/s, {j['cores']} one-thread jobs {j['split_jobs_img_per_s']:.0f} "
                f"img/s: **{j['jobs_speedup']:.3f}x** the mean of the one-job timings around it (A/A "
                f"{j['aa_ratio']:.3f}{', noisy' if j['noisy'] else ''}; the worst round against the faster of "
                f"its two one-job timings: {j['worst_round_speedup']:.3f}x). "
                f"Most seeds per hour: `--jobs {j['best_jobs']}`.",
                "",
            ]
    if results.get("skipped"):
        lines += ["## Not measured", "", _table(results["skipped"], ["part", "mode", "reason"]), ""]
    return "\n".join(lines)
