"""The watermark's markdown table (the paper's Table 2 layout plus the ownership decisions)."""

from __future__ import annotations

from typing import Any

COLUMNS = ("| model | acc | ID WSR | OoD WSR | p paired | p Welch (ref.) | paired test "
           "| d(secret) | d(controls) mean / max | p panel | panel test (decision) |")


def fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.3e}"


def decision(claimed: bool) -> str:
    return "claimed" if claimed else "not claimed"


def row(name: str, m: dict[str, Any]) -> str:
    """One table row of a ``Verifier.measure`` result."""
    return (f"| {name} | {m['acc']:.4f} | {m['wsr_id']:.4f} | {m['wsr_ood']:.4f} | {fmt_p(m['p_value'])} | "
            f"{fmt_p(m['p_ttest'])} | {decision(m['claimed_paired'])} | {m['score']:.3f} | "
            f"{m['control_mean']:.3f} / {m['control_max']:.3f} | {fmt_p(m['p_panel'])} | "
            f"**{decision(m['claimed'])}** |")


def null_line(name: str, m: dict[str, Any]) -> str:
    n = m["null"]
    return (f"- {name}: {n['keys']} random keys in place of the secret: panel test claims "
            f"{n['panel']:.3f}, paired test claims {n['paired']:.3f}")


def header(res: dict[str, Any]) -> list[str]:
    inj = res.get("injection", {})
    valid = "exact" if res.get("panel_calibrated", True) else "NOT calibrated (fixed public trigger)"
    return [
        f"trigger={res['trigger']} target={res['target']} gamma={inj.get('gamma', float('nan')):.4g} "
        f"perturb={inj.get('perturb')} | verification n={res['n_verify']} (ID), "
        f"{res['n_verify_ood']} (OoD); attacker n={res['n_attacker']}",
        "",
        f"Decision at alpha = {res['alpha']}: claimed when d(secret) ranks above {res['panel_size']} random "
        f"control triggers of the same kind, d(t) = mean P(target | t(x)) of the model minus that of the "
        f"non-watermarked original on the {res['panel_on'].upper()} verification inputs "
        f"(p panel = (1 + #controls >= secret) / (K + 1)); false-claim rate under 'the suspect never saw "
        f"the key' <= alpha ({valid}). The paired column applies the same alpha to the paired t-test. "
        f"Key commitment: `{res.get('commitment', '')[:16]}`.",
    ]


def format_table(res: dict[str, Any], title: str = "") -> str:
    """Markdown for one ``Watermark.evaluate`` result."""
    lines = [f"### {title}" if title else "### Watermark", "", *header(res), "", COLUMNS,
             "|" + "---|" * (COLUMNS.count("|") - 1)]
    lines.append(row("non-watermarked", res["original"]))
    lines.append(row("victim (watermarked)", res["watermarked"]))
    for a, m in res.get("attacks", {}).items():
        lines.append(row(a, m))
    if "control" in res:
        lines.append(row("negative control (clean, independent)", res["control"]))
    nulls = [(k, res[k]) for k in ("original", "control") if k in res and "null" in res[k]]
    if nulls:
        lines += ["", "Measured false-claim rates on models without the owner's watermark:"]
        lines += [null_line("non-watermarked (d = 0 for every trigger: never claimed)" if k == "original"
                        else "negative control", m) for k, m in nulls]
    return "\n".join(lines) + "\n"


__all__ = ["format_table", "row", "fmt_p", "decision", "COLUMNS"]
