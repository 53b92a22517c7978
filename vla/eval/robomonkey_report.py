"""The test-time scaling page (`vla.eval.robomonkey`): success and latency vs N, and the offline scaling curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verifier_candidates(ver: dict) -> str:
    own = (ver.get("settings") or {}).get("policy_samples")
    return "perturbed expert chunks" + (f" and {own} of the policy's own samples per frame" if own else "")


def sample_choice(held_out: dict) -> str:
    """The verifier's pick among the policy's samples on held-out frames, when it was trained with them."""
    if held_out.get("sample_pick_rmse") is None:
        return ""
    return (" Choosing among the policy's samples on held-out frames: RMSE to the expert "
            f"{fmt(held_out['sample_pick_rmse'])} for the verifier's pick, {fmt(held_out['sample_rmse'])} for one "
            f"sample, {fmt(held_out['sample_oracle_rmse'])} for the closest (oracle).")


def markdown(cfg, results: dict) -> str:
    prov = results["provenance"]
    commit = str(prov.get("commit"))[:10] + ("+" if prov.get("dirty") else "")
    rows, offline = results["closed_loop"], results["offline"]
    tasks = list(rows[0]["tasks"])
    base = rows[0]["latency_ms"]["p50"] or float("nan")
    ver = results["verifier_training"]
    lines = [
        "# Test-time scaling (RoboMonkey): sample N, verify, execute the best",
        "",
        f"Checkpoint `{results['checkpoint']}`, verifier `{results['verifier']}`. Per observation: N chunks from one "
        f"backbone pass and one batched head call, {cfg.candidates} Gaussian draws around them (diagonal, gripper by "
        "majority vote; 0 = the N samples themselves; with N = 1 their spread is zero, so the one sample is executed) "
        "scored by the verifier in one batch, the best executed. "
        f"Closed loop on {', '.join(tasks)}, {cfg.eval.episodes_per_task} episodes per task from seed "
        f"{cfg.eval.seed_start} (never used for demos). Latency: one chunk, everything above included.",
        "",
        f"Verifier: trained {ver.get('steps')} steps on {verifier_candidates(ver)}, loss {fmt(ver.get('first_loss'))} "
        f"-> {fmt(ver.get('last_loss'))}; expert above a heavy perturbation on "
        f"{fmt((ver.get('train') or {}).get('expert_above_heavy'), 2)} of training frames and "
        f"{fmt((ver.get('held_out') or {}).get('expert_above_heavy'), 2)} of held-out ones (chance 0.5)."
        + sample_choice(ver.get("held_out") or {}),
        "",
        f"Made by `vla-eval robomonkey` at commit {commit}; the full config, command, versions and machine are in "
        "`robomonkey.json`.",
        "",
        "## Closed loop",
        "",
        "| run | mean success | " + " | ".join(f"{t} (95% CI)" for t in tasks)
        + " | latency p50 / p99 (ms) | vs policy |",
        "|---|---|" + "---|" * len(tasks) + "---|---|",
    ]
    for row in rows:
        cells = [f"{r['successes']}/{r['episodes']} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                 for r in row["tasks"].values()]
        lat = row["latency_ms"]
        lines.append(f"| {row['name']} | {row['success_rate']:.2f} | " + " | ".join(cells)
                     + f" | {lat['p50']:.1f} / {lat['p99']:.1f} | {lat['p50'] / base:.2f}x |")
    fit = offline["fit"]
    lines += [
        "",
        "## Offline: action error vs number of samples",
        "",
        f"{offline['frames']} demo frames (evenly spaced over all the demos, so mostly frames the verifier trained on; "
        "its held-out figures are above); RMSE to the expert chunk in normalised units. Oracle: the sample closest to "
        "the expert among the first k; verifier: the verifier's pick among them; one sample: no choice. Power-law fit "
        f"of the oracle curve: log e = log a + b log k with a = {fit['a']:.4f}, b = {fit['b']:.3f} "
        f"(R^2 {fmt(fit['r2'])}).",
        "",
        "| k | oracle RMSE | verifier RMSE | one sample |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['k']} | {r['oracle_rmse']:.4f} | {r['verifier_rmse']:.4f} | {r['single_rmse']:.4f} |"
              for r in offline["rows"]]
    return "\n".join(lines) + "\n"


def log_ticks(ax, values: list[int]) -> None:
    """Ticks at the measured counts only, on a log axis."""
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(values, [str(v) for v in values])


def plot(results: dict, path: Path) -> Path:
    rows = [r for r in results["closed_loop"] if r["samples"]]
    base = results["closed_loop"][0]
    n = [r["samples"] for r in rows]
    fig, (success, latency, offline) = plt.subplots(1, 3, figsize=(13, 3.6))
    success.plot(n, [r["success_rate"] for r in rows], "o-", label="sample + verify")
    success.axhline(base["success_rate"], color="grey", ls="--", label="policy alone")
    success.set(xscale="log", xlabel="samples per observation N", ylabel="mean success", ylim=(-0.02, 1.02),
                title="closed-loop success")
    log_ticks(success, n)
    success.legend()
    latency.plot(n, [r["latency_ms"]["p50"] for r in rows], "o-", label="p50")
    latency.plot(n, [r["latency_ms"]["p99"] for r in rows], "s:", label="p99")
    latency.axhline(base["latency_ms"]["p50"], color="grey", ls="--", label="policy alone p50")
    latency.set(xscale="log", xlabel="samples per observation N", ylabel="ms per chunk", title="latency")
    log_ticks(latency, n)
    latency.legend()
    off = results["offline"]
    k = [r["k"] for r in off["rows"]]
    offline.loglog(k, [r["oracle_rmse"] for r in off["rows"]], "o-", label="oracle pick")
    offline.loglog(k, [r["verifier_rmse"] for r in off["rows"]], "s-", label="verifier pick")
    offline.loglog(k, [r["single_rmse"] for r in off["rows"]], ":", color="grey", label="one sample")
    fit = off["fit"]
    offline.loglog(k, [fit["a"] * v ** fit["b"] for v in k], "--", lw=0.8, label=f"fit b={fit['b']:.2f}")
    log_ticks(offline, k)
    offline.set(xlabel="samples k", ylabel="RMSE to expert (normalised)", title="offline scaling")
    offline.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(cfg, results: dict, out: Path) -> Path:
    plot(results, out / "robomonkey.png")
    path = out / "robomonkey.md"
    path.write_text(markdown(cfg, results) + "\n![success, latency and offline scaling](robomonkey.png)\n")
    return path
