"""Regenerate the benchmark summary from the JSON results: `benchmarks/results/SUMMARY.md` and the README's results
section (between `<!-- results:start -->` and `<!-- results:end -->`; appended at the end of the README when the
markers are missing). The tables are never typed by hand.

Usage: python -m benchmarks.report [--results-dir DIR] [--summary FILE] [--readme FILE | --no-readme]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets_scripts.registry import BENCHMARKS


RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
START_MARKER, END_MARKER = "<!-- results:start -->", "<!-- results:end -->"
# File stem -> title, in the order of the summary.
SPEED_BENCHMARKS = {
    "parsing": "Scan parsing", "rendering": "Rendering (3 views, 224 px)", "processor": "Image processor, end to end",
    "views": "Dataset views preparation", "training": "Training step", "pipeline": "Pipeline latency",
    "synthetic": "Synthetic data generation", "demo": "Main job", "limits": "Hostile input",
    "loading": "Split loading (float32 pixels -> float16)",
}  # fmt: skip


def load_results(results_dir) -> dict:
    """The JSON results of `results_dir` by file stem (`parsing`, ..., `accuracy_study`)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(Path(results_dir).glob("*.json"))}


def _number(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _ratio(value, reference) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def _parsing(r: dict) -> list:
    wrl, bnt = r["wrl"], r["bnt"]
    return [
        (f".wrl, BU-3DFE size ({wrl['vertices']:,} vertices): load_scan", f"{_number(wrl['load_scan_ms'])} ms",
         f"naive regex/float() reader {_number(wrl['naive_reader_ms'])} ms",
         f"{wrl['speedup_vs_naive']:.2f}x faster"),
        (f".bnt, Bosphorus size ({bnt['grid'][0]}x{bnt['grid'][1]} grid): load_scan (+ triangulation)",
         f"{_number(bnt['load_scan_ms'])} ms", f"plain numpy reader {_number(bnt['reference_reader_ms'])} ms",
         f"{bnt['load_scan_over_reference']:.2f}x the time"),
    ]  # fmt: skip


def _rendering(r: dict) -> list:
    pyrender = r.get("pyrender_scans_per_s")
    reference = f"pyrender {_number(pyrender)} scans/s" if pyrender else f"pyrender unavailable: {r.get('pyrender_error')}"
    policy = r.get("omp_wait_policy", "default")
    rasterizer = f"{r['torch_rasterizer']} rasterizer" if "torch_rasterizer" in r else "vectorised rasterizer"
    rows = [
        (f"torch backend ({rasterizer}), 1 scan per call (OMP_WAIT_POLICY {policy})", "torch_scans_per_s"),
        (f"torch backend ({rasterizer}), 1 thread", "torch_1thread_scans_per_s"),
        (f"torch backend ({rasterizer}), batches of {r['torch_batch_size']}", "torch_batched_scans_per_s"),
        ("torch backend, vectorised rasterizer (the GPU code path), 1 thread", "torch_vectorized_1thread_scans_per_s"),
        (f"torch backend ({rasterizer}), 1 scan per call, OMP_WAIT_POLICY unset (a library user's program)",
         "torch_wait_policy_unset_scans_per_s"),
    ]
    present = [(label, key) for label, key in rows if key in r]  # older results lack some rows
    table = [(label, f"{_number(r[key])} scans/s", reference, _ratio(r[key], pyrender)) for label, key in present]
    if "cuda_batched_scans_per_s" in r:
        rasterizer_on_gpu = r.get("cuda_rasterizer", "vectorized")  # the best of the batch sizes timed there
        table.append((f"torch on {r['cuda_device']} ({rasterizer_on_gpu} rasterizer), batches of "
                      f"{r.get('cuda_best_batch_size', r['torch_batch_size'])}",
                      f"{_number(r['cuda_batched_scans_per_s'])} scans/s", reference,
                      _ratio(r["cuda_batched_scans_per_s"], pyrender)))  # fmt: skip
    return table


def _processor(r: dict) -> list:
    table = []
    for name in ("224px", "small_preset"):
        m = r[name]
        stages = m["stage_ms"]["parse"] + m["stage_ms"]["render"]
        table.append((f".wrl path -> pixel_values, {m['views']} views at {m['image_size']} px",
                      f"{_number(m['ms_per_scan'])} ms/scan ({_number(m['scans_per_s'])} scans/s)",
                      f"parse + render stages {_number(stages)} ms", f"{m['ms_per_scan'] / stages:.2f}x the time"))  # fmt: skip
    return table


def _views(r: dict) -> list:
    one = r["num_proc_1"]["scans_per_s"]
    return [
        (f"{label} ({r['subjects']} subjects, {r['image_size']} px)", f"{_number(r[key]['scans_per_s'])} scans/s",
         f"1 process {_number(one)} scans/s", _ratio(r[key]["scans_per_s"], one))
        for key, label in (("num_proc_1_one_thread", "1 process, 1 torch thread"), ("num_proc_2", "2 processes"))
    ]  # fmt: skip


def _training(r: dict) -> list:
    return [
        (f"{run['preset']} preset on {run['device']}, batch {r['batch_size']} ({run['views']} views, "
         f"{run['image_size']} px)",
         f"{_number(run['facet_vlm']['samples_per_s'])} samples/s, peak RSS +{_number(run['facet_vlm']['peak_rss_increase_mb'])} MB"
         + (f", CUDA peak {_number(run['facet_vlm']['cuda_peak_allocated_mb'])} MB" if run["device"] == "cuda" else "")
         + (f", MFU {run['facet_vlm']['mfu_of_bf16_peak']:.1%}" if "mfu_of_bf16_peak" in run["facet_vlm"] else ""),
         f"CVSA=mean, no MTGF, CE only: {_number(run['reference']['samples_per_s'])} samples/s",
         f"{run['samples_per_s_over_reference']:.2f}x")
        for run in r["runs"]
    ]  # fmt: skip


def _pipeline(r: dict) -> list:
    call, preprocess = r["pipeline_call"], r["stages"]["preprocess"]
    return [
        (f"one .wrl file -> sorted scores, {r['model_config']['views']} views at {r['model_config']['image_size']} px",
         f"median {_number(call['median_ms'])} ms, p95 {_number(call['p95_ms'])} ms",
         f"preprocess (parse + render) {_number(preprocess['median_ms'])} ms",
         f"{call['median_ms'] / preprocess['median_ms']:.2f}x the time"),
        ("model load from disk", f"{_number(r['model_load_s'])} s", "-", "-"),
    ]  # fmt: skip


def _synthetic(r: dict) -> list:
    one, two = r["write_bu3dfe_tree"]
    return [
        (f"write {one['subjects']} subjects x 25 models, {two['workers']} workers",
         f"{_number(two['ms_per_model'])} ms/model", f"1 worker {_number(one['ms_per_model'])} ms/model",
         _ratio(one["ms_per_model"], two["ms_per_model"]) + " the speed"),
    ]  # fmt: skip


def _demo(r: dict) -> list:
    return [
        ("`facet-vlm demo`: whole command, wall time", f"{_number(r['wall_seconds'], 0)} s "
         f"(training {_number(r['train_seconds'], 0)} s)", f"budget {r['budget_seconds']} s",
         f"{r['wall_seconds'] / r['budget_seconds']:.2f}x the budget"),
        (f"subject-independent accuracy, {r['test_samples']} held-out scans", f"{r['accuracy'] * 100:.1f} % "
         f"(macro F1 {r['macro_f1']:.3f})", f"target {r['target_accuracy'] * 100:.0f} %",
         f"{(r['accuracy'] - r['target_accuracy']) * 100:+.1f} points"),
    ]  # fmt: skip


def _limits(r: dict) -> list:
    cases = r["cases"]
    titles = {
        "zip_bomb": lambda c: f"zip upload, one entry declaring 1 KB that inflates to {c['inflated_mb']:,} MB",
        "many_entries": lambda c: f"zip upload of {c['entries']:,} empty frame entries",
        "full_screen_triangles": lambda c: f".wrl of 5 vertices and {c['triangles']:,} full-screen triangles, load and render",
        "parse_memory": lambda c: f".wrl of {c['vertices']:,} vertices, {c['triangles']:,} triangles: load_scan",
    }  # fmt: skip
    rows = []
    for name, title in titles.items():
        case = cases[name]
        verdict = "accepted" if case["outcome"] == "accepted" else "refused"
        rows.append((title(case), f"{verdict} in {_number(case['wall_s'])} s, peak RSS +{_number(case['peak_rss_increase_mb'])} MB",
                     f"file {_number(case['file_mb'])} MB", f"{case['peak_over_file_size']:.1f}x the file size"))  # fmt: skip
    return rows


def _loading(r: dict) -> list:
    chunked, at_once = r["chunked"], r["all_at_once"]
    return [
        (f"{r['rows']:,} samples ({_number(r['float32_gb'])} GB of float32): time, chunked",
         f"{_number(chunked['seconds'])} s", f"all rows at once {_number(at_once['seconds'])} s",
         _ratio(at_once["seconds"], chunked["seconds"])),
        (f"peak memory above the process (holding {_number(chunked['held_gb'])} GB of float16), chunked",
         f"+{_number(chunked['peak_increase_gb'])} GB", f"all rows at once +{_number(at_once['peak_increase_gb'])} GB",
         _ratio(at_once["peak_increase_gb"], chunked["peak_increase_gb"])),
    ]  # fmt: skip


SPEED_ROWS = {"parsing": _parsing, "rendering": _rendering, "processor": _processor, "views": _views,
              "training": _training, "pipeline": _pipeline, "synthetic": _synthetic, "demo": _demo,
              "limits": _limits, "loading": _loading}  # fmt: skip


def _environment(r: dict) -> dict:
    return r.get("environment", {})


def speed_markdown(results: dict) -> list:
    """Lines of the speed and memory table (one row per measurement, with its in-run reference and the ratio)."""
    present = [name for name in SPEED_BENCHMARKS if name in results]
    if not present:
        return []
    lines = ["### Speed and memory", "",
             "| benchmark | measurement | value | reference (same run) | ratio | load avg (1 min) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name in present:
        load = _environment(results[name]).get("load_average_1_5_15min", [None])[0]
        title = SPEED_BENCHMARKS[name] + (" (quick)" if results[name].get("quick") else "")
        for measurement, value, reference, ratio in SPEED_ROWS[name](results[name]):
            lines.append(f"| {title} | {measurement} | {value} | {reference} | {ratio} | {_number(load)} |")
    lines += ["", "Commands:", ""]
    lines += [f"- `{name}`: `{_environment(results[name]).get('command', '-')}`" for name in present]
    return lines + [""]


def _note(result: dict) -> str:
    """' Note: ...' from a result's `note` (how it was run, when the command alone does not say), or nothing."""
    return f" Note: {result['note']}" if result.get("note") else ""


def _paired_cell(paired: dict | None) -> str:
    """'+1.2 points [-0.3, +2.7]: no measurable effect' from a paired difference (accuracy_study.paired_difference)."""
    if not paired or paired["mean"] is None:
        return "-"
    interval = f" [{paired['ci95'][0] * 100:+.1f}, {paired['ci95'][1] * 100:+.1f}]" if paired["ci95"] else ""
    return f"{paired['mean'] * 100:+.1f} points{interval}: {paired['verdict']}"


def _folds(run: int, total: int) -> str:
    """The folds a study ran, its first `run` of `total`: "fold 0 of 10" or "folds 0-9 of 10"."""
    return f"fold 0 of {total}" if run == 1 else f"folds 0-{run - 1} of {total}"


def accuracy_markdown(study: dict, source: str = "accuracy_study.json") -> list:
    """Lines of the accuracy table: per row the test metric (mean +- std over the (fold, seed) runs), the train
    metric, and the paired difference to the full model with its 95 % interval and verdict."""
    s = study["settings"]
    state = "" if study.get("complete") else " **(incomplete: still running or stopped; runs so far)**"
    lines = [
        f"### Accuracy study (synthetic benchmark, subject-independent folds): `{source}`" + state, "",
        f"{s['subjects']} synthetic subjects, {_folds(s['folds_run'], s['folds'])} (the same folds for every "
        f"row), {s['seeds']} model seed(s) per fold (the data seed fixed), {s['steps']} steps of batch "
        f"{s['batch_size']}, {s['preset']} preset, learning rate {s['learning_rate']}, test intensities "
        f"{s['test_intensities']} (static rows); recipe: {s['recipe']}"
        + ("; **quick mode: a CI-sized check, not a result**" if study.get("quick") else "") + ". "
        f"Paired difference: {s['paired_difference']}. "
        f"Wall time {_number(study.get('wall_seconds'))} s. Command: `{_environment(study).get('command', '-')}`"
        + _note(study),
        "",
        "| row | metric | test mean | std | train mean | paired difference to the full model [95 % CI] | runs | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for row in study["rows"]:
        lines.append(f"| {row['description']} | {row['metric']} | {_number(row['mean'], 3)} | {_number(row['std'], 3)} "
                     f"| {_number(row['train_mean'], 3)} | {_paired_cell(row.get('paired_difference'))} "
                     f"| {len(row['per_run'])} | {_number(row['wall_seconds'], 0)} |")  # fmt: skip
    zero_shot = next((row for row in study["rows"] if row["kind"] == "zero_shot" and row["runs"]), None)
    if zero_shot:
        seen = sorted({word for run in zero_shot["runs"] for word in run.get("words_in_training_class_prompts", [])})
        lines += ["", f"Zero-shot class names: {', '.join(s['zero_shot_words'].values())}."
                  + (f" Of these, {', '.join(seen)} appeared in the training class prompts (it was its class's "
                     "canonical prompt word), so it was not unseen." if seen
                     else " None of them appeared in any training prompt.")]  # fmt: skip
    return lines + [""]


def pretraining_markdown(r: dict, source: str = "pretraining.json") -> list:
    """Lines of the default-start table: per arm the test accuracy (mean +- std over the (fold, seed) runs), the train
    accuracy, and the paired difference to the default command with its 95 % interval and verdict."""
    s = r["settings"]
    state = "" if r.get("complete") else " **(incomplete: still running or stopped; runs so far)**"
    generator = s["target_generator"]
    layout = BENCHMARKS[s.get("layout", "bu3dfe")].name  # results written before the 4D layout are BU-3DFE trees
    first_seed = s.get("first_seed", 1)  # results written before --first-seed start at 1
    lines = [
        f"### What the default start and its parts add, on faces of another shape family: `{source}`" + state, "",
        f"Target: a {layout}-layout tree of {s['subjects']} synthetic people from the generator's transfer target "
        f"(shape family {generator['shape_family']!r}, {generator['grid_spacing_mm']} mm mesh spacing, seed "
        f"{generator['seed']}); the pretrained model (`{r['pretrained']}`, {_number(r.get('pretraining_seconds'), 0)} "
        f"s to build) never saw that family. Standard protocol, {_folds(s['run_folds'], s['folds'])}, "
        f"model seeds {first_seed}-{first_seed + s['seeds'] - 1}; `{s['command']}`"
        + ("; **quick mode: a CI-sized check, not a result**" if r.get("quick") else "") + ". "
        f"Paired difference: {s['paired_difference']}. Wall time {_number(r.get('wall_seconds'))} s. "
        f"Command: `{_environment(r).get('command', '-')}`" + _note(r),
        "",
        "| arm | test accuracy | std | train accuracy | paired difference to the default [95 % CI] | runs |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for summary in r.get("arms", {}).values():
        lines.append(f"| {summary['description']} | {_number(summary['mean'], 3)} | {_number(summary['std'], 3)} "
                     f"| {_number(summary['train_mean'], 3)} | {_paired_cell(summary['paired_difference'])} "
                     f"| {len(summary['runs'])} |")  # fmt: skip
    if r.get("zero_shot"):
        word_sets = s["zero_shot_words"]
        lines += ["", "Zero-shot: test accuracy with other class names, as the `pipeline` prompts ("
                  + "; ".join(f"{name.replace('_', ' ')}: {', '.join(words.values()) or 'the class names'}"
                              for name, words in word_sets.items()) + ").", "",
                  "| model | " + " | ".join(name.replace("_", " ") for name in word_sets) + " | runs |",
                  "|---" * (len(word_sets) + 2) + "|"]  # fmt: skip
        for summary in r["zero_shot"].values():
            lines.append(f"| {summary['description']} | "
                         + " | ".join(_number(summary["accuracy"][name], 3) for name in word_sets)
                         + f" | {len(summary['runs'])} |")  # fmt: skip
    return lines + [""]


def liveness_markdown(r: dict, source: str = "liveness.json") -> list:
    """Lines of the component liveness report: what CVSA, MTGF, the scalars and each loss term do in a trained model."""
    lines = [
        f"### Component liveness (`{source}`): what each part of the trained `{r['run']}` model does", "",
        f"On its {r['test_samples']} test samples. Command: `{_environment(r).get('command', '-')}`"
        + _note(r), "",
    ]  # fmt: skip
    cvsa = r.get("cvsa")
    if cvsa:
        lines += ["CVSA view weights (blanked: that view alone set to the background):", "",
                  "| view (yaw, pitch) | mean weight | spread across samples | weight when the view is blanked |",
                  "|---|---|---|---|"]  # fmt: skip
        for (yaw, pitch), mean, spread, blanked in zip(r["config"]["views"], cvsa["mean"], cvsa["std_across_samples"],
                                                       cvsa["blanked"]):  # fmt: skip
            lines.append(f"| ({yaw:g}, {pitch:g}) | {mean:.3f} | {spread:.3f} | {blanked['weight_when_blanked']:.3f} |")
        lines.append("")
    mtgf = r.get("mtgf")
    if mtgf:
        cases = {"random_text_keys": "random unit vectors as text keys", "mean_text_key": "the mean prompt as the only key",
                 "skipped": "MTGF skipped (h = norm(f))"}  # fmt: skip
        lines += [f"MTGF: test accuracy {mtgf['accuracy']:.3f} with the class prompts as its keys (the logits always use "
                  "the real prompts).", "",
                  "| MTGF's text replaced by | accuracy | predictions changed | mean cos(h, real h) |", "|---|---|---|---|"]  # fmt: skip
        for key, title in cases.items():
            case = mtgf[key]
            lines.append(f"| {title} | {case['accuracy']:.3f} | {case['predictions_changed'] * 100:.1f} % "
                         f"| {case['mean_cosine_to_real_h']:.3f} |")  # fmt: skip
        lines.append("")
    names = {"logit_scale": "logit scale exp(s)", "margin": "L_gf margin alpha", "cvsa_temperature": "CVSA temperature",
             "temporal_temperature": "temporal pooling temperature"}  # fmt: skip
    lines += ["| scalar | first epoch | last epoch |", "|---|---|---|"]
    for key, title in names.items():
        values = r["scalars"].get(key) or []
        if values:
            lines.append(f"| {title} | {values[0]:.2f} | {values[-1]:.2f} |")
    gradients = r["loss_gradients"]
    lines += ["", "| loss term | weight | gradient norm (weighted) | relative to L_ce |", "|---|---|---|---|"]
    for term, title in (("ce", "L_ce"), ("itc", "L_itc"), ("cons", "L_cons"), ("gf", "L_gf")):
        lines.append(f"| {title} | {gradients['weights'][term]:g} | {gradients['gradient_norm'][term]:.3f} "
                     f"| {gradients['relative_to_ce'][term]:.3f} |")  # fmt: skip
    return lines + [""]


def summary_markdown(results: dict) -> str:
    """The Markdown summary of every result: machine, speed table, accuracy table, and how to regenerate it."""
    environments = [_environment(r) for r in results.values() if _environment(r)]
    cpus = sorted({f"{e['cpu_model']} ({e['cpu_count']} cores)" for e in environments})
    lines = [
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` (do not edit by hand; "
        "`facet-vlm bench` or `python -m benchmarks` runs the benchmarks).",
        "",
        f"Machine: {', '.join(cpus) or 'unknown'}; "
        + ", ".join(sorted({f"torch {e['torch']}" for e in environments if 'torch' in e}))
        + ". The machine is shared with other work: the load average is recorded with every result, and timings "
        "are medians of repeated runs.",
        "",
    ]  # fmt: skip
    commits = sorted({e["git_commit"][:10] for e in environments if e.get("git_commit")})
    changed = sorted({path for e in environments for path in e.get("uncommitted_changes", [])})
    if commits:
        lines += [f"Code: commit {', '.join(commits)}"
                  + (f"; files with uncommitted changes at run time: {', '.join(changed)}." if changed else "."), ""]  # fmt: skip
    lines += speed_markdown(results)
    for name in sorted(name for name in results if name.startswith("accuracy_study")):  # e.g. a quick and a full run
        lines += accuracy_markdown(results[name], f"{name}.json")
    for prefix, markdown in (("liveness", liveness_markdown), ("pretraining", pretraining_markdown)):
        for name in sorted(name for name in results if name.startswith(prefix)):  # e.g. the main job's and another
            lines += markdown(results[name], f"{name}.json")
    return "\n".join(lines).rstrip() + "\n"


def update_readme(readme, markdown: str) -> Path:
    """Replace the text between the results markers of `readme` (append a results section with them if missing)."""
    readme = Path(readme)
    text = readme.read_text()
    block = f"{START_MARKER}\n{markdown.rstrip()}\n{END_MARKER}"
    if START_MARKER in text and END_MARKER in text:
        before, rest = text.split(START_MARKER, 1)
        text = before + block + rest.split(END_MARKER, 1)[1]
    elif START_MARKER in text or END_MARKER in text:
        raise ValueError(f"{readme} has only one of the markers {START_MARKER} and {END_MARKER}.")
    else:
        text = text.rstrip("\n") + "\n\n## Benchmark results\n\n" + block + "\n"
    readme.write_text(text)
    return readme


def write_report(results_dir=RESULTS_DIR, summary=None, readme=None) -> str:
    """Write the summary next to the results (or to `summary`) and, when `readme` is given, into its results section."""
    markdown = summary_markdown(load_results(results_dir))
    summary = Path(summary or Path(results_dir) / "SUMMARY.md")
    summary.write_text("# Benchmark results\n\n" + markdown)
    if readme is not None:
        update_readme(readme, markdown)
    return markdown


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="folder of the JSON results")
    parser.add_argument("--summary", help="Markdown file to write (default: RESULTS_DIR/SUMMARY.md)")
    parser.add_argument("--readme", default=str(README), help="README whose results section is rewritten")
    parser.add_argument("--no-readme", action="store_true", help="only write the summary")
    arguments = parser.parse_args(argv)
    write_report(arguments.results_dir, arguments.summary, None if arguments.no_readme else arguments.readme)
    print(f"Wrote {arguments.summary or Path(arguments.results_dir) / 'SUMMARY.md'}"
          + ("" if arguments.no_readme else f" and the results section of {arguments.readme}"))  # fmt: skip


if __name__ == "__main__":
    main()
