"""The red-team report: DIR/redteam.md, DIR/redteam.png (surrogate agreement and best adversarial
distortion against queries, the defense's first action marked) and DIR/redteam.json (the same
numbers, without per-request records)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.redteam.client import actions

TARGET_AGREEMENT = 0.90


def benign_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Benign requests degraded or denied (what a user would notice), and flags behind them."""
    records = result["records"]
    hit = [r for r in records if r["status"] != 200 or r.get("degraded")]
    flagged = [r for r in records if actions(r)]
    subjects = {
        result["callers"][r["caller"]]["subject"]
        for r in records
        if (r.get("probe") or {}).get("quarantined")
    }
    return {
        "requests": len(records),
        "degraded_or_denied": len(hit),
        "rate": len(hit) / len(records) if records else 0.0,
        "any_action": len(flagged),
        "quarantined_clients": sorted(subjects),
    }


def _value(result: dict[str, Any], v: float | None) -> str:
    if v is None:
        return "–"
    if result["metric"] == "agreement":
        return f"{v:.3f}"
    return f"L2 {v:.1f}" + (" ✔" if v <= result["eps"] else "")


def _success_at(result: dict[str, Any]) -> int | None:
    """Queries at which the attack first met its goal (agreement ≥ 0.90, distortion ≤ eps)."""
    for n, v in result["curve"]:
        if v is None:
            continue
        if result["metric"] == "agreement" and v >= TARGET_AGREEMENT:
            return int(n)
        if result["metric"] == "distortion" and v <= result["eps"]:
            return int(n)
    return None


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for mode, phase in report["modes"].items():
        for r in phase["results"]:
            if r["attack"] == "benign":
                continue
            action = r["first_action"]
            out.append(
                {
                    "mode": mode,
                    "defense": phase["defense"],
                    "attack": r["label"],
                    "keys": len(r["callers"]),
                    "queries": r["queries"],
                    "requests": r["requests"],
                    "seconds": r["seconds"],
                    "first_action": action,
                    "at_action": r["at_action"],
                    "final": r["final"],
                    "goal_at": _success_at(r),
                    "blocked": r["blocked"],
                    "quarantined_at": r.get("quarantined_at"),
                    "stopped": r.get("stopped", ""),
                    "metric": r["metric"],
                    "eps": r.get("eps"),
                    "art_final": r.get("art_final"),
                }
            )
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ext, ax_ev) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"off": "-", "on": "--"}
    colors: dict[str, Any] = {}
    palette = plt.get_cmap("tab10")
    for mode, phase in report["modes"].items():
        for r in phase["results"]:
            if r["attack"] == "benign" or not r["curve"]:
                continue
            color = colors.setdefault(r["label"], palette(len(colors)))
            ax = ax_ext if r["metric"] == "agreement" else ax_ev
            pts = [(n, v) for n, v in r["curve"] if v is not None]
            if not pts:
                continue
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                styles.get(mode, ":"),
                color=color,
                label=f"{r['label']} (defense {mode})",
            )
            if r.get("quarantined_at") and r.get("at_quarantine") is not None:
                ax.plot(r["quarantined_at"], r["at_quarantine"], "X", color=color, markersize=9)
            action = r["first_action"]
            if action and r["at_action"] is not None:
                ax.plot(action["queries"], r["at_action"], "o", color=color, markersize=8)
                ax.annotate(
                    action["kind"],
                    (action["queries"], r["at_action"]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=color,
                )
    ax_ext.axhline(TARGET_AGREEMENT, color="grey", lw=0.8, ls=":")
    ax_ext.set(
        xscale="log",
        xlabel="queries (rows answered)",
        ylabel="surrogate agreement with the victim (held-out)",
        title="extraction: fidelity vs queries (● first defense action, ✕ quarantine)",
        ylim=(0, 1.02),
    )
    eps = next(
        (r["eps"] for p in report["modes"].values() for r in p["results"] if r.get("eps")), None
    )
    if eps:
        ax_ev.axhline(eps, color="grey", lw=0.8, ls=":")
    ax_ev.set(
        xlabel="queries (rows answered)",
        ylabel="L2 distance of the best adversarial example",
        title=f"evasion (labels only): success below L2 {eps or 0:.1f} (● action, ✕ quarantine)",
    )
    for ax in (ax_ext, ax_ev):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Red-team run {report['date']}" + (" (short)" if report["short"] else ""),
        "",
        "`.venv/bin/python -m bench.redteam.run"
        + (" --short" if report["short"] else "")
        + "` (`make redteam`): every attack and the benign clients at once through Envoy →"
        " extauthz → MLServer `digits`, one stack per defense mode; each caller paces itself by"
        " its `RateLimit-Policy` and waits out 429s; "
        f"{report['rows_per_request']} row(s) per request. Queries are rows answered."
        f" Commit {report.get('commit', '?')}; per mode the stack's seconds: "
        + ", ".join(f"{m} {p.get('seconds', '–')} s" for m, p in report["modes"].items())
        + ".",
        "",
        "| defense | attack | keys | queries | requests | s | first action (queries, kind) |"
        " at first action | quarantined at | at the end | goal reached at | stopped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows(report):
        a = row["first_action"]
        action_text = f"{a['queries']}, {a['kind']}" if a else "none"
        r = {"metric": row["metric"], "eps": row["eps"]}
        lines.append(
            f"| {row['mode']} ({row['defense']}) | {row['attack']} | {row['keys']} |"
            f" {row['queries']} | {row['requests']} | {row['seconds']} |"
            f" {action_text} |"
            f" {_value(r, row['at_action'])} |"
            f" {row['quarantined_at'] if row['quarantined_at'] is not None else '–'} |"
            f" {_value(r, row['final'])} |"
            f" {row['goal_at'] if row['goal_at'] is not None else 'never'} |"
            f" {'blocked' if row['blocked'] else row['stopped'] or 'budget'} |"
        )
    for mode, phase in report["modes"].items():
        for r in phase["results"]:
            if r.get("metric") == "distortion":
                lines.append(
                    f"\n{r['label']} ({mode}): held-out digit at L2 norm {r['x0_norm']:.1f}, its"
                    f" nearest class boundary at L2 {r['d_star']:.2f} (exact, the victim is"
                    f" linear); success = within {r['eps']:.2f}."
                )
            if any(k != "200" for k in r.get("statuses", {})) or r.get("degraded_responses"):
                lines.append(
                    f"\n{r['label']} ({mode}) statuses: {r['statuses']};"
                    f" degraded responses: {r.get('degraded_responses', 0)}."
                )
    lines += [
        "",
        "Goal: agreement ≥ 0.90 (extraction), an adversarial example within the L2 bound "
        "(evasion). Action kinds: `quarantine`, `429`, `403`, `degraded` (outputs differed from "
        "the victim's), `limits_lowered` (`RateLimit-Policy` below the tier, or a risk "
        "multiplier < 1 in Redis), `degrade_flag` (a degrade level set in Redis while this "
        "response was still exact, e.g. labels-only requests).",
        "",
        "## Benign clients",
        "",
        "| defense | clients | requests | degraded or denied | rate | any action | quarantined |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, phase in report["modes"].items():
        for r in phase["results"]:
            if r["attack"] != "benign":
                continue
            b = benign_summary(r)
            lines.append(
                f"| {mode} ({phase['defense']}) | {len(r['callers'])} | {b['requests']} |"
                f" {b['degraded_or_denied']} | {b['rate']:.2%} | {b['any_action']} |"
                f" {', '.join(b['quarantined_clients']) or 'none'} |"
            )
    for mode, phase in report["modes"].items():
        if phase["defense"] == "unavailable":
            lines += [
                "",
                f"Defense {mode}: not measured — this tree has no `extauthz analytics run`.",
            ]
    lines += ["", "![fidelity vs queries](redteam.png)", ""]
    return "\n".join(lines)


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    slim = {
        **report,
        "modes": {
            mode: {
                **phase,
                "results": [
                    {k: v for k, v in r.items() if k != "records"}
                    | ({"benign": benign_summary(r)} if r["attack"] == "benign" else {})
                    for r in phase["results"]
                ],
            }
            for mode, phase in report["modes"].items()
        },
    }
    (out / "redteam.json").write_text(json.dumps(slim, indent=1) + "\n")
    plot(report, out / "redteam.png")
    (out / "redteam.md").write_text(markdown(report))
