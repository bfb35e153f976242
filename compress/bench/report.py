"""Bench output: bench.json (DESIGN §3), a markdown table and a throughput-vs-batch-size plot."""

from __future__ import annotations

from pathlib import Path

from compress.artifacts import write_json

COLUMNS = (
    ("variant", "variant", "{}"),
    ("device", "device", "{}"),
    ("dtype", "dtype", "{}"),
    ("engine", "engine", "{}"),
    ("compiled", "compiled", "{}"),
    ("batch_size", "batch", "{}"),
    ("seq_per_s", "seq/s", "{:.1f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p90_ms", "p90 ms", "{:.2f}"),
    ("gflops", "GFLOPs", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("flops_reduction", "FLOPs red.", "{:.2f}x"),
    ("efficiency", "efficiency", "{:.2f}"),
    ("speedup_vs_fp32_eager", "vs fp32 eager", "{:.2f}x"),
    ("speedup_vs_ort_int8", "vs ORT int8", "{:.2f}x"),  # the product's claim: against ONNX Runtime int8
    ("matmul_speedup", "matmul speedup", "{:.2f}x"),  # torch CPU rows only
    ("agreement", "agreement", "{:.3f}"),  # ONNX Runtime rows: argmax as the torch fp32 model's
)
LINE_STYLES = {"eager": "--", "compiled": "-", "onnxruntime": ":"}
MARKERS = {"bf16": "s", "int8": "^"}  # fp32: "o"


def markdown_table(result: dict) -> str:
    """One row per variant, engine, compile setting and batch size; ratios against the fp32 baseline."""
    machine = result["machine"]
    lines = [
        f"{result['task']} {result['split']}, {result['examples']} examples; {machine['cpu']}, "
        f"{machine['threads']} threads" + (f"; {machine['gpu']}" if machine.get("gpu") else ""),
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in result["results"]:
        cells = (fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# The rows a user compares (DESIGN §5), as (variant, engine, dtype, compiled); every final row too.
ORT_PEER = ("baseline", "onnxruntime", "int8", False)  # what a user deploys without us
PEERS = {
    ("baseline", "torch", "fp32", False): "HF fp32 eager",
    ORT_PEER: "ORT int8, unpruned",
    ("pruned", "torch", "fp32", False): "pruned fp32 eager",
    ("pruned", "onnxruntime", "int8", False): "pruned, ORT int8",
}


def peer_table(result: dict, device: str = "cpu") -> str:
    """Per batch size: sequences/s and p50 of the models a user compares, as multiples of ONNX
    Runtime int8 of the unpruned model, beside the bar: 0.9 x the FLOPs reduction."""
    rows = [r for r in result["results"] if r["device"] == device]
    lines = [
        "| batch | model | seq/s | p50 ms | GFLOPs | vs ORT int8 | bar: 0.9 x FLOPs red. | vs HF fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: r["batch_size"]):
        if _key(row) not in PEERS and row["variant"] != "final":
            continue
        title = PEERS.get(_key(row)) or f"final, {_mode(row)} {row['dtype']}"
        peer = next((r for r in rows if r["batch_size"] == row["batch_size"] and _key(r) == ORT_PEER), None)
        versus = row.get("speedup_vs_ort_int8")
        bar = f"{0.9 * peer['gflops'] / row['gflops']:.2f}x" if peer else "-"
        lines.append(
            f"| {row['batch_size']} | {title} | {row['seq_per_s']:.1f} | {row['p50_ms']:.2f} | "
            f"{row['gflops']:.3f} | {'-' if versus is None else f'{versus:.2f}x'} | {bar} | "
            f"{row['speedup_vs_fp32_eager']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def _key(row: dict) -> tuple:
    return row["variant"], row["engine"], row["dtype"], row["compiled"]


def plot_throughput(result: dict, path: Path) -> None:
    """Sequences/s against batch size: a panel per device, a line per variant, dtype and mode (torch
    eager or compiled, ONNX Runtime)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted({row["device"] for row in result["results"]})
    fig, axes = plt.subplots(1, len(devices), figsize=(7 * len(devices), 4.5), squeeze=False)
    colors = {variant: f"C{index}" for index, variant in enumerate(("baseline", "pruned", "final"))}
    sizes = sorted({row["batch_size"] for row in result["results"]})
    for ax, device in zip(axes[0], devices, strict=True):
        lines: dict[tuple, list[dict]] = {}
        for row in result["results"]:
            if row["device"] == device:
                lines.setdefault((row["variant"], row["dtype"], _mode(row)), []).append(row)
        for (variant, dtype, mode), rows in lines.items():
            rows = sorted(rows, key=lambda r: r["batch_size"])
            ax.plot(
                [r["batch_size"] for r in rows],
                [r["seq_per_s"] for r in rows],
                marker=MARKERS.get(dtype, "o"),
                color=colors[variant],
                linestyle=LINE_STYLES[mode],
                label=f"{variant} {dtype} {mode}",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("sequences / s")
        machine = result["machine"]
        where = f"CPU threads: {machine['threads']}" if device == "cpu" else machine["gpu"]
        ax.set_title(f"{result['task']} {result['split']}, {where}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mode(row: dict) -> str:
    if row.get("engine") == "onnxruntime":
        return "onnxruntime"
    return "compiled" if row["compiled"] else "eager"


def write_report(result: dict, out_dir: Path) -> dict[str, Path]:
    """bench.json, bench.md and bench.png in OUT; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"bench.{name}" for name in ("json", "md", "png")}
    write_json(paths["json"], result)
    paths["md"].write_text(markdown_table(result) + "\nAgainst ONNX Runtime (CPU):\n\n" + peer_table(result))
    plot_throughput(result, paths["png"])
    return paths
