r"""Turns a sweep's runs (tools/sweep.py) into the paper's plots and a table.

  python tools/plot_sweep.py --root=workdirs/mini_e [--out=DIR] [--eval=heldout]

Reads <root>/sweep.json and each run's metrics.jsonl (its last evaluation),
then writes to --out (default: the root):
  sweep.png  each metric against log2 E (E = codes x c floats per frame, the
             paper's x axis), one colour per patch size p (Fig. 2/4/11),
             the generation probe's beside them when the runs have one
             (probe gFID, sFID, nearest-view PSNR, DiT loss: Fig. 5);
             for sweeps over encoder/decoder sizes (Fig. 6-9), each metric
             against the run instead;
  sweep.md   a markdown table of every run, and the Pearson correlation of
             each metric with log2 E overall and within each p.
Runs without an evaluation yet are listed as missing.
"""
import argparse
import json
import math
import re

import numpy as np

from vitok_jax.io import fileio

METRICS = ("rpsnr", "rssim", "rfid", "rfvd", "bicubic_rpsnr")
# The generation probe's (evaluators/generation_probe.py), when a run has one:
# column name -> its evaluator's metric.
PROBE_METRICS = {"probe_gfid": "gfid", "probe_sfid": "sfid",
                 "probe_nearest_psnr": "own_class_psnr",
                 "probe_loss": "probe_loss"}
METRICS += tuple(PROBE_METRICS)


def patch_of(args: dict):
  """p of a run: its "p" argument, or the patch of its "variant"."""
  if "p" in args:
    return int(args["p"])
  m = re.search(r"/(?:(\d+)x)?(\d+)$", args.get("variant", ""))
  return int(m.group(2)) if m else None


def last_eval(workdir: str, prefix=None):
  """The last metrics.jsonl row with evaluation results -> {metric: value},
  with the last generation probe's (PROBE_METRICS) when there is one."""
  path = fileio.join(workdir, "metrics.jsonl")
  if not fileio.exists(path):
    return None
  found, probe = None, {}
  with fileio.open(path) as f:
    for line in f:
      row = json.loads(line)
      names = [k[:-len("/probe_loss")] for k in row if k.endswith("/probe_loss")]
      if names:
        probe = {col: row[f"{names[0]}/{m}"] for col, m in
                 PROBE_METRICS.items() if f"{names[0]}/{m}" in row}
      keys = [k for k in row if k.endswith("/rpsnr") and
              (prefix is None or k.startswith(prefix + "/"))]
      if keys:
        name = keys[0].rsplit("/", 1)[0]
        found = {m: row[f"{name}/{m}"] for m in METRICS + ("code_floats",)
                 if f"{name}/{m}" in row}
        found["step"] = row["step"]
  return None if found is None else {**found, **probe}


def collect(root: str, prefix=None) -> tuple:
  sweep = fileio.read_json(fileio.join(root, "sweep.json"))
  rows, missing = [], []
  for run in sweep["runs"]:
    ev = last_eval(run["workdir"], prefix)
    if ev is None or "code_floats" not in ev:
      missing.append(run["name"])
      continue
    rows.append(dict(name=run["name"], args=run["args"], p=patch_of(run["args"]),
                     E=ev["code_floats"], log2E=math.log2(ev["code_floats"]),
                     **{k: v for k, v in ev.items() if k != "code_floats"}))
  return sweep, rows, missing


def correlations(rows) -> dict:
  """{metric: {"all": r, p: r, ...}} Pearson r with log2 E (>= 3 points)."""
  out = {}
  for m in METRICS:
    pts = [(r["log2E"], r[m], r["p"]) for r in rows if m in r]
    if len(pts) < 3:
      continue
    res = {}
    groups = [("all", pts)] + [(p, [t for t in pts if t[2] == p])
                               for p in sorted({t[2] for t in pts})]
    for key, g in groups:
      x, y = np.array([t[0] for t in g]), np.array([t[1] for t in g])
      if len(g) >= 3 and x.std() > 0 and y.std() > 0:
        res[key] = float(np.corrcoef(x, y)[0, 1])
    out[m] = res
  return out


def residuals_by_p(rows, metric: str) -> dict:
  """Fit metric = a + b log2 E over all runs; the mean residual of each p.
  Near 0 for every p: E alone predicts the metric; a spread: p matters at
  a given E."""
  pts = [(r["log2E"], r[metric], r["p"]) for r in rows if metric in r]
  if len(pts) < 3:
    return {}
  x, y = np.array([t[0] for t in pts]), np.array([t[1] for t in pts])
  b, a = np.polyfit(x, y, 1)
  res = y - (a + b * x)
  return {p: float(np.mean([r for r, t in zip(res, pts) if t[2] == p]))
          for p in sorted({t[2] for t in pts})}


def _cell(v: float) -> str:
  """Three decimals, or three significant digits for tiny values (a random
  Inception's distances)."""
  return f"{v:.3g}" if 0 < abs(v) < 0.01 else f"{v:.3f}"


def table(rows, corr, missing) -> str:
  metrics = [m for m in METRICS if any(m in r for r in rows)]
  lines = ["| run | p | E | " + " | ".join(metrics) + " |",
           "|---|---|---|" + "---|" * len(metrics)]
  for r in sorted(rows, key=lambda r: (r["p"] or 0, r["E"])):
    cells = [_cell(r[m]) if m in r else "" for m in metrics]
    lines.append(f"| {r['name']} | {r['p']} | {int(r['E'])} | " +
                 " | ".join(cells) + " |")
  lines += ["", "Pearson r with log2 E:", "",
            "| metric | all runs | " + " | ".join(
                f"p={p}" for p in sorted({r['p'] for r in rows})) + " |",
            "|---|---|" + "---|" * len({r["p"] for r in rows})]
  for m, res in corr.items():
    lines.append(f"| {m} | {res.get('all', float('nan')):.3f} | " + " | ".join(
        f"{res[p]:.3f}" if p in res else "n/a"
        for p in sorted({r['p'] for r in rows})) + " |")
  lines += ["", "Mean residual from the all-runs fit metric ~ log2 E, by p "
            "(0 everywhere: E alone predicts the metric):", "",
            "| metric | " + " | ".join(
                f"p={p}" for p in sorted({r['p'] for r in rows})) + " |",
            "|---|" + "---|" * len({r["p"] for r in rows})]
  for m in corr:
    res = residuals_by_p(rows, m)
    lines.append(f"| {m} | " + " | ".join(
        f"{res[p]:+.3f}" if p in res else "n/a"
        for p in sorted({r['p'] for r in rows})) + " |")
  if missing:
    lines += ["", f"Missing (no evaluation yet): {', '.join(missing)}"]
  return "\n".join(lines) + "\n"


def plot(rows, out_png: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics = [m for m in METRICS if m != "bicubic_rpsnr" and
             any(m in r for r in rows)]
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6),
                           squeeze=False)
  by_size = len({r["p"] for r in rows}) == 1 and len({r["E"] for r in rows}) == 1
  for ax, m in zip(axes[0], metrics):
    if by_size:  # encoder/decoder sizes at one p and E: metric per run
      names = [r["name"] for r in rows]
      ax.plot(range(len(rows)), [r[m] for r in rows], "o-")
      ax.set_xticks(range(len(rows)), names, rotation=45, ha="right")
    else:
      for p in sorted({r["p"] for r in rows}):
        pts = sorted((r["log2E"], r[m]) for r in rows if r["p"] == p and m in r)
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=f"p={p}")
      if m == "rpsnr" and any("bicubic_rpsnr" in r for r in rows):
        pts = sorted({(r["log2E"], r["bicubic_rpsnr"]) for r in rows})
        ax.plot([x for x, _ in pts], [y for _, y in pts], "k--", alpha=0.5,
                label="bicubic, same E")
      ax.set_xlabel("log2 E (floats per frame)")
      ax.legend(fontsize=8)
    ax.set_title(m)
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  fileio.write_atomic(out_png, buf.getvalue())
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--root", required=True)
  ap.add_argument("--out", default=None)
  ap.add_argument("--eval", default=None, help="evaluator name (default: "
                  "the first with rPSNR)")
  args = ap.parse_args(argv)
  out = args.out or args.root
  sweep, rows, missing = collect(args.root, args.eval)
  if not rows:
    raise SystemExit(f"No run under {args.root} has an evaluation yet "
                     f"(missing: {missing})")
  corr = correlations(rows)
  fileio.makedirs(out)
  md = table(rows, corr, missing)
  fileio.write_atomic(fileio.join(out, "sweep.md"), md)
  plot(rows, fileio.join(out, "sweep.png"), f"{sweep['sweep']}: "
       f"{len(rows)} runs")
  print(md)
  return dict(rows=rows, correlations=corr, missing=missing)


if __name__ == "__main__":
  main()
