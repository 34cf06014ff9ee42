"""The plain-language page and the verdict frame as catalogue messages (issue 22), for the reports in a language other
than English.

The English report keeps the wording of :mod:`audit.report.html` (``plain_headline`` / ``plain_summary``); these
functions say the same things from the same records, every sentence a message of the catalogue
(:mod:`audit.report.i18n`) whose id is the English sentence, every number through the language's formatter. Call
them inside :func:`audit.report.i18n.use`.
"""
from __future__ import annotations

from typing import Any

from audit.report.i18n import _, chance_words, format_integer, format_p, format_percent

__all__ = ["plain_headline", "plain_summary", "decision_line", "verdict_label", "gate_status", "role_name"]


def _per_work(result: Any) -> Any:
    try:
        return result.attack(result.primary_attack)
    except KeyError:
        return None


def _closed_named(result: Any, attack: str) -> int | None:
    for ad in (result.to_dict().get("attacks") or []):
        if ad.get("attack") == attack:
            works = ad.get("artworks") or []
            if not any(w.get("p_closed") is not None for w in works):
                return None
            v = ad.get("n_flagged_closed")
            if v is None:
                v = sum(1 for w in works if w.get("p_closed") is not None and w["p_closed"] <= result.plan.alpha)
            return int(v)
    return None


def _bound(result: Any) -> tuple[Any, int | None, int | None]:
    a = _per_work(result)
    if a is None or a.members_lower_bound is None:
        return a, None, None
    return a, int(a.members_lower_bound), _closed_named(result, a.attack)


def role_name(role: str) -> str:
    return {"suspect": _("suspect"), "control": _("control"), "member": _("member"),
            "nonmember": _("nonmember")}.get(role, role)


def gate_status(status: str) -> str:
    return {"pass": _("passed"), "fail": _("FAILED"), "not_run": _("not run"),
            "info": _("information")}.get(status, status)


def decision_line(result: Any) -> str:
    """The verdict box's bold line."""
    d, alpha = result.verdict.decision, format_p(result.plan.alpha)
    if d == "reject_h0":
        return _("Inconsistent with no suspect work being in the training data, at α = %(alpha)s", alpha=alpha)
    if d == "fail_to_reject":
        return _("Consistent with no suspect work being in the training data, at α = %(alpha)s", alpha=alpha)
    if d == "reject_lower":
        return _("Suspects score lower than the controls: not evidence of membership, at α = %(alpha)s", alpha=alpha)
    if d == "withheld":
        return _("Verdict withheld: a validity gate failed or could not be run")
    return _("Not tested")


def verdict_label(confirmatory: bool, recorded_confirmatory: bool) -> str:
    if confirmatory:
        return _("confirmatory")
    if recorded_confirmatory:
        return _("exploratory — the records do not show that the plan preceded the scores (see the procedure record)")
    return _("exploratory — the plan was changed after scoring or its hash was not recorded before it")


def plain_headline(result: Any) -> str:
    """One sentence without statistics vocabulary, its claim no larger than the numbers'."""
    d = result.verdict.decision
    if d == "reject_h0":
        a, k, _named = _bound(result)
        if k:
            return _("The model fits the suspect works more closely than comparable works known not to be in its "
                     "training data. If those comparison works are a fair comparison, this indicates that at least "
                     "%(k)s of the %(n)s suspect works were used to train it.",
                     k=format_integer(k), n=format_integer(a.n_bound))
        return _("The model fits the suspect works more closely than comparable works known not to be in its training "
                 "data. If those comparison works are a fair comparison, this indicates that some of the suspect works "
                 "were used to train it.")
    if d == "fail_to_reject":
        return _("This audit found no evidence that the suspect works were used to train the model. That does not show "
                 "that they were not used.")
    if d == "reject_lower":
        return _("The suspect works differ from the comparison works in a way that does not point to training; the "
                 "comparison works should be reconsidered.")
    if d == "withheld":
        return _("No conclusion: a check of the method's own assumptions failed or could not be run, so the comparison "
                 "cannot be trusted either way.")
    return _("No test could be run on these works.")


def _basis_phrase(facts: dict[str, Any]) -> str:
    b = facts.get("basis") or {}
    rows = [r for r in b.get("rows") or [] if r["role"] == b.get("control_role", "control") and r["total"]]
    if not rows or not rows[0]["bases"]:
        return _("The records do not state why the controls are known not to be in the training data (no basis in the "
                 "manifest or the case file): that is for whoever chose them to establish.")
    bases = _("; ").join(_("%(basis)s (%(n)s)", basis=x["value"], n=format_integer(x["n"])) for x in rows[0]["bases"])
    return _("The stated basis of the controls is: %(bases)s (see \"Basis of the comparison\"); the audit takes it as "
             "given.", bases=bases)


def _how_many(result: Any) -> str | None:
    a, k, named = _bound(result)
    if a is None or k is None:
        return None
    conf = format_percent(1.0 - result.plan.alpha)
    if k == 0:
        return _("How many? The per-work analysis (closed testing on the per-work p-values of attack '%(attack)s') does "
                 "not establish, at %(conf)s confidence, that any particular number of the %(n)s suspect works were in "
                 "the training data.", attack=a.attack, conf=conf, n=format_integer(a.n_bound))
    txt = _("How many? With %(conf)s confidence, at least %(k)s of the %(n)s suspect works were in the training data "
            "(closed testing on the per-work p-values of attack '%(attack)s'; the bound holds simultaneously for any "
            "subset of the works a reader picks).", conf=conf, k=format_integer(k), n=format_integer(a.n_bound),
            attack=a.attack)
    if named is not None and named >= k:
        txt += " " + _("The same procedure names %(m)s of them individually (their closed-testing p-values are in the "
                       "per-work table).", m=format_integer(named))
    elif named:
        txt += " " + _("The same procedure names %(m)s of them individually; for the rest of the count it cannot say "
                       "which works they are.", m=format_integer(named))
    elif k == a.n_bound:
        txt += " " + _("As the bound covers every suspect work, it is a statement about each of them.")
    else:
        txt += " " + _("The count is about the group: it does not say which of the works they are.")
    return txt


def _rates(result: Any) -> str | None:
    if result.verdict.decision not in ("reject_h0", "fail_to_reject", "withheld"):
        return None
    dr = result.to_dict().get("decision_rates")
    if not dr:
        return _("How often is this procedure wrong on this model? The false-positive rate of the whole decision (test "
                 "and validity gates together) was not measured on this model in this report; the validity gates in "
                 "the summary give the checks that were run.")
    fpr, power = dr.get("fpr"), dr.get("power")
    level = format_percent(result.plan.ci_level)

    def pct(x: float) -> str:
        return format_percent(x, 1)

    bits = []
    if fpr:
        bits.append(_("the whole decision (test and validity gates together) concluded wrongly that suspect works were "
                      "trained on in %(k)s of %(n)s trials in which none was (%(rate)s, %(level)s interval "
                      "%(lo)s–%(hi)s)", k=format_integer(fpr["k"]), n=format_integer(fpr["n"]), rate=pct(fpr["rate"]),
                      level=level, lo=pct(fpr["lo"]), hi=pct(fpr["hi"])))
    else:
        bits.append(_("the false-positive rate of the whole decision could not be measured"))
    if power:
        bits.append(_("it detected known training works in %(k)s of %(n)s trials (%(rate)s, interval %(lo)s–%(hi)s)",
                      k=format_integer(power["k"]), n=format_integer(power["n"]), rate=pct(power["rate"]),
                      lo=pct(power["lo"]), hi=pct(power["hi"])))
    else:
        bits.append(_("its power could not be measured"))
    return _("How often is this procedure wrong? Measured on %(where)s: %(what)s.",
             where=_(dr.get("measured_on") or "this model"), what=_("; ").join(bits))


def plain_summary(result: Any, facts: dict[str, Any] | None = None) -> list[str]:
    """The verdict in plain language, a few short paragraphs, in the current language."""
    facts = facts or {}
    v, plan, t = result.verdict, result.plan, result.primary_test
    n_s = format_integer(t.n_suspect if t else 0)
    n_c = format_integer(t.n_control if t else 0)
    alpha = format_p(plan.alpha)
    out: list[str] = []
    if v.decision == "reject_h0":
        out.append(_("The model fits the %(n_s)s suspect works more closely than %(n_c)s comparable works known not to "
                     "be in its training data (the controls), by more than chance would explain at the level fixed in "
                     "advance (α = %(alpha)s, p = %(p)s: a difference this large would arise by chance %(chance)s "
                     "times if none of them had been used). If the controls are a fair comparison — that is, if a "
                     "suspect work the model was not trained on is, for the model, no different from them "
                     "(exchangeable with them): works of the same kind, chosen without regard to any score — the data "
                     "are inconsistent with no suspect work being in the training data.",
                     n_s=n_s, n_c=n_c, alpha=alpha, p=format_p(v.p_value, plan.alpha), chance=chance_words(v.p_value))
                   + " " + _basis_phrase(facts) + " "
                   + _("That p-value is the audit's one headline result (every other p-value in the report is labelled "
                       "per-work or exploratory); it is statistical evidence, not proof."))
        if t is not None and t.n_resamples and v.p_value is not None and v.p_value <= 1.0 / (t.n_resamples + 1) + 1e-12:
            out.append(_("That p-value is the smallest this test can report: it compares the real result with %(n)s "
                         "random reshufflings of which works are called suspects, and none of them came out as "
                         "extreme. The evidence may be stronger still; more reshufflings would show how much.",
                         n=format_integer(t.n_resamples)))
    elif v.decision == "fail_to_reject":
        out.append(_("The model does not treat the %(n_s)s suspect works differently from %(n_c)s comparable works "
                     "known not to be in its training data, beyond what chance would explain at the level fixed in "
                     "advance (α = %(alpha)s, p = %(p)s). The data are consistent with no suspect work being in the "
                     "training data. That is not evidence that the works were not used: the test may be too weak for "
                     "this model or this number of works (see the power analysis).",
                     n_s=n_s, n_c=n_c, alpha=alpha, p=format_p(v.p_value, plan.alpha)))
    elif v.decision == "reject_lower":
        out.append(_("The %(n_s)s suspect works score lower than %(n_c)s comparable works known not to be in the "
                     "training data (α = %(alpha)s, two-sided p = %(p)s). Training on a work makes it score higher, not "
                     "lower, so this is not evidence that any suspect work was used; it suggests that the control works "
                     "differ from the suspects and are not a fair comparison.",
                     n_s=n_s, n_c=n_c, alpha=alpha, p=format_p(v.p_value, plan.alpha)))
    elif v.decision == "withheld":
        failed = [g for g in result.gates if g.failed]
        names = _("; ").join(_(g.title) for g in failed) or _("a required validity gate could not be run")
        out.append(_("No verdict is given. A check of the audit's own assumptions failed, so the comparison between the "
                     "suspect works and the control works cannot be trusted in either direction (%(gates)s; the "
                     "findings are under \"Validity gates\").", gates=names))
        if any(g.name == "blind_baseline" for g in failed):
            out.append(_("Remedy: choose control works that match the suspects in everything except training (same "
                         "artist or style, period, size, format and source) and run the audit again."))
    else:
        out.append(_("No set-level test was run: there were no suspect or no control works to compare."))
    if v.decision in ("reject_h0", "fail_to_reject"):
        hm = _how_many(result)
        if hm:
            out.append(hm)
    rates = _rates(result)
    if rates:
        out.append(rates)
    if not v.confirmatory:
        out.append(_("This report was regenerated with an analysis plan that differs from the one recorded before the "
                     "scores were computed; its verdict is exploratory."))
    return out
