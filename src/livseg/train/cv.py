"""Cross-validation by patient of the whole cascade, scored at each case's original resolution.

This is ``livseg cv`` and the procedure behind the shipped models' card
(``scripts/train_pretrained.py``): one measurement, one path. :func:`cross_validate`

1. splits the cases into ``folds`` folds by patient
   (:func:`livseg.data.splits.kfold_by_patient` with ``seed``);
2. in fold k trains every configuration (:func:`livseg.train.train`) on the cases of the other
   folds only;
3. segments every held-out case of fold k at its original resolution with the whole cascade of
   each liver model (fold liver model -> liver post-processing -> fold tumour model in the liver
   box), through :meth:`livseg.infer.Cascade.load` and :func:`livseg.infer.segment_case` exactly
   as ``livseg segment`` does;
4. scores each prediction against its reference with the LiTS metric set
   (:func:`livseg.metrics.evaluate_case`, :func:`livseg.metrics.summarize`), per fold and pooled
   over all held-out cases: every case is scored once, by the fold that did not train on it.

**Stages.** A configuration with ``train.target = "tumour"`` (pre-processing pipeline
``tumour``) trains the tumour stage, any other a liver stage (:func:`stage_of`). Give one or more
liver configurations and at most one tumour configuration: each liver configuration makes one
cascade, named after it, and all share the fold's tumour model. Without a tumour configuration
the cascades are liver only (``Cascade.load(..., tumour=False)``): the labels hold 0/1, the
liver metrics are the estimate, and the tumour and lesion columns describe an empty tumour
prediction. The shipped tumour model is never used instead: it was trained on every
development case, held-out ones included. At most one coarse 3-D configuration (pipeline
``coarse``) adds the coarse liver stage to every cascade (``Cascade.load(coarse_model=...)``);
without one the cascades are the papers' (no shipped coarse stage is used either).

**Training-only cases** (``extra``): added to every fold's training cases, never held out or
scored (e.g. ``lits-117``, whose spacing is an estimate).

**No checkpoint is chosen on a held-out case.** Every fold run validates only after its last
epoch (``train.val_every`` is set to ``train.epochs``), so its best checkpoint is its last one
and early stopping cannot fire.

Output folder ``out``::

    splits.json                    fold assignment (format livseg-splits-1) + seed + the resolved
                                   configurations; a re-run must match it
    build.lock                     held while a call creates or checks the run (``--fold``
                                   calls started together take turns)
    cache/                         slice cache shared by all folds and configurations
    fold<k>/models/<config>/       the fold's training run of each configuration
    fold<k>/predictions/<cascade>/ <case>_seg.nii.gz (input geometry), _measurements.json,
                                   _lesions.csv (livseg segment's outputs, no overlay)
    fold<k>/scores/<cascade>/      per_case.csv, summary.json of the fold's held-out cases
    fold<k>/fold.json              written last, marks the fold finished: per model its
                                   checkpoint, training cases, CPU and wall minutes; per cascade
                                   and case the segmenting seconds
    scores/<cascade>/              per_case.csv, summary.json pooled over all held-out cases
    cv_summary.json                all of it in one file (format ``livseg-cv-2``, see
                                   :func:`cross_validate`)

**Resuming.** Running again into the same ``out`` with the same cases, folds, seed and
configurations continues: finished folds are skipped (nothing retrained or re-segmented), an
interrupted training resumes from its last checkpoint, a fold stopped while segmenting segments
its cases again. ``out`` holding anything else is refused. Cases of folds finished by an earlier
run are scored again from their written predictions for the pooled results.

CPU minutes are the user + system time of this process and of its finished child processes
(data-loader workers) during a training call; for a training resumed after a kill they cover
the resumed part only (``resumed`` is true).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livseg.data.lock import LOCK_FILE, folder_lock
from livseg.data.splits import Split
from livseg.errors import InputError, LivsegError, OutputExistsError
from livseg.io.atomic import write_text_atomic
from livseg.train.config import Config, ConfigError

if TYPE_CHECKING:
    from livseg.io.datasets import Case
    from livseg.metrics import CaseResult, EvaluationResult

logger = logging.getLogger("livseg.train.cv")

__all__ = ["CV_FORMAT", "CVResult", "cross_validate", "load_stage_configs", "stage_of"]

CV_FORMAT = "livseg-cv-2"
SPLITS_FILE = "splits.json"
FOLD_FILE = "fold.json"
SUMMARY_FILE = "cv_summary.json"
TIMING_FILE = "cv_timing.json"
STAGES = ("coarse", "liver", "tumour")


@dataclass(frozen=True)
class CVResult:
    """The outcome of :func:`cross_validate`.

    Attributes:
        out: The cross-validation folder.
        splits: Per fold ``{"train": [...], "val": [...]}`` case ids.
        scores: Per cascade (its liver configuration's name) the pooled evaluation of every
            held-out case (``.cases``, ``.summary``; distances in mm at the original spacing).
        summary_file: ``out/cv_summary.json``.
    """

    out: Path
    splits: tuple[Split, ...]
    scores: dict[str, EvaluationResult]
    summary_file: Path


@dataclass(frozen=True)
class _Plan:
    """What a cross-validation runs: validated configurations, cases and folds."""

    coarse: Config | None
    livers: tuple[Config, ...]
    tumour: Config | None
    cases: dict[str, Case]
    splits: tuple[Split, ...]
    seed: int

    @property
    def configs(self) -> tuple[Config, ...]:
        first = (self.coarse,) if self.coarse is not None else ()
        return first + self.livers + ((self.tumour,) if self.tumour is not None else ())


@dataclass(frozen=True)
class _Options:
    """How the folds run: device, slice cache and progress callbacks."""

    device: str | None
    cache: Path
    progress: Callable[..., Any] | None
    cache_progress: Callable[..., Any] | None


# --- configurations --------------------------------------------------------------------------
def stage_of(config: Config) -> str:
    """The cascade stage a configuration trains: ``"coarse"``, ``"liver"`` or ``"tumour"``.

    A tumour stage has ``train.target = "tumour"`` and the ``tumour`` pre-processing pipeline
    (the liver box cropped, three HU windows); a liver stage has neither; the coarse 3-D liver
    stage has the ``coarse`` pipeline (and the liver target).

    Raises:
        ConfigError: ``train.target`` and ``data.pipeline`` disagree (the cascade could not
            feed that model its input).
    """
    tumour_target = config.train.target == "tumour"
    if tumour_target != (config.data.pipeline == "tumour"):
        raise ConfigError(
            f"configuration {config.name}: train.target={config.train.target!r} with "
            f"data.pipeline={config.data.pipeline!r}; a tumour stage needs both 'tumour', "
            "a liver stage neither"
        )
    if config.data.pipeline == "coarse":
        return "coarse"
    return "tumour" if tumour_target else "liver"


def _split_prefix(item: str) -> tuple[str | None, str]:
    """``"tumour:model.growth=4"`` -> ``("tumour", "model.growth=4")``; no prefix -> None."""
    key, eq, value = item.partition("=")
    prefix, colon, key = key.partition(":")
    if not colon:
        return None, item
    return prefix.strip(), f"{key}{eq}{value}"


def load_stage_configs(names: Sequence[str], overrides: Sequence[str] = ()) -> list[Config]:
    """Load the configurations of a cross-validation and apply ``--set`` overrides.

    ``KEY=VALUE`` applies to every configuration; ``PREFIX:KEY=VALUE`` only to those whose stage
    (``liver`` or ``tumour``, :func:`stage_of`) or name is ``PREFIX``, e.g.
    ``tumour:model.growth=4`` (a stage prefix without a configuration of that stage is
    ignored).

    Args:
        names: Configuration files or bundled names.
        overrides: ``[PREFIX:]section.key=value`` strings.

    Returns:
        The resolved configurations, in the order of ``names``.

    Raises:
        ConfigError: A bad configuration or override, or a prefix that is neither a stage nor
            a given configuration's name.
    """
    from livseg.train.config import load_config
    from livseg.train.overrides import apply_overrides

    parsed = [_split_prefix(o) for o in overrides]
    configs, used = [], set()
    for name in names:
        base = load_config(name)
        tags = {stage_of(base), base.name}
        mine = [o for p, o in parsed if p is None or p in tags]
        used |= {p for p, _ in parsed if p in tags}
        configs.append(apply_overrides(base, mine) if mine else base)
    unknown = sorted({p for p, _ in parsed if p is not None} - used - set(STAGES))
    if unknown:
        raise ConfigError(
            f"--set {unknown[0]}:...: {unknown[0]!r} is neither a stage ({', '.join(STAGES)}) "
            f"nor the name of a given configuration ({', '.join(c.name for c in configs)})"
        )
    return configs


def _last_epoch_only(config: Config) -> Config:
    """The configuration validating only after its last epoch (no held-out selection)."""
    t = config.train
    if t.val_every == t.epochs:
        return config
    logger.info(
        "%s: train.val_every %d -> %d: a fold validates only after its last epoch, so no "
        "checkpoint is chosen on a held-out case",
        config.name,
        t.val_every,
        t.epochs,
    )
    return config.replace(train=dataclasses.replace(t, val_every=t.epochs))


def _stages(configs: Sequence[Config]) -> tuple[Config | None, tuple[Config, ...], Config | None]:
    """The coarse configuration (or None), the liver ones and the tumour one (or None), checked."""
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"configuration name(s) given twice: {', '.join(dup)}")
    staged: dict[str, list[Config]] = {s: [] for s in STAGES}
    for c in configs:
        staged[stage_of(c)].append(_last_epoch_only(c))
    if not staged["liver"]:
        raise ConfigError(
            f"no liver configuration among {', '.join(names) or 'the arguments'}: the cascade "
            "starts with a liver model; give a liver configuration too"
        )
    for stage in ("coarse", "tumour"):
        if len(staged[stage]) > 1:
            raise ConfigError(
                f"several {stage} configurations ({', '.join(c.name for c in staged[stage])}); "
                f"the cascades share one {stage} model: cross-validate them separately"
            )
    first = staged["coarse"][0] if staged["coarse"] else None
    tumour = staged["tumour"][0] if staged["tumour"] else None
    return first, tuple(staged["liver"]), tumour


def _with_extra(splits: list[Split], extra: Sequence[Case]) -> tuple[Split, ...]:
    """Every fold trains on the extra (training-only) cases too; they are never held out."""
    ids = [c.case_id for c in extra]
    return tuple({"train": list(sp["train"]) + ids, "val": list(sp["val"])} for sp in splits)


def _make_plan(
    configs: Sequence[Config],
    data: str | os.PathLike,
    folds: int,
    seed: int,
    extra: str | os.PathLike | None = None,
) -> _Plan:
    """Check the configurations, find the cases and split them (by patient)."""
    from livseg.data.splits import kfold_by_patient
    from livseg.io.datasets import discover_cases

    coarse, livers, tumour = _stages(configs)
    cases = discover_cases(data)
    more = discover_cases(extra) if extra is not None else []
    clash = sorted({c.case_id for c in cases} & {c.case_id for c in more})
    if clash:
        raise InputError(f"{extra}: training-only case id(s) also in {data}: {', '.join(clash)}")
    splits = kfold_by_patient([c.case_id for c in cases], folds, seed=seed)
    return _Plan(
        coarse=coarse,
        livers=livers,
        tumour=tumour,
        cases={c.case_id: c for c in [*cases, *more]},
        splits=_with_extra(splits, more),
        seed=int(seed),
    )


# --- the run folder -----------------------------------------------------------------------------
def _config_docs(plan: _Plan) -> dict[str, Any]:
    from livseg.train.config import config_to_dict

    return json.loads(json.dumps({c.name: config_to_dict(c) for c in plan.configs}))


def _differences(path: Path, plan: _Plan) -> list[str]:
    """What differs between the cross-validation saved in ``path`` and ``plan``."""
    from livseg.data.splits import load_splits
    from livseg.train.config import with_defaults

    doc = json.loads(path.read_text(encoding="utf-8"))
    saved = json.loads(
        json.dumps({n: with_defaults(c) for n, c in (doc.get("configs") or {}).items()})
    )
    now = _config_docs(plan)
    diff = [
        f"configuration {n}" for n in sorted(set(saved) | set(now)) if saved.get(n) != now.get(n)
    ]
    if doc.get("seed") != plan.seed:
        diff.append(f"seed {doc.get('seed')} -> {plan.seed}")
    if load_splits(path) != list(plan.splits):
        diff.append("folds (cases or --folds)")
    return diff


def _open_run(out: Path, plan: _Plan, main: bool) -> None:
    """Start the cross-validation in ``out`` or check that it continues the one there.

    Calls starting together (``--fold`` per process) take turns, so one creates the run.
    """
    if not (out / SPLITS_FILE).is_file() and _holds_other(out):
        _refuse_other(out)  # before the lock file is put there
    with folder_lock(out):
        _open_run_locked(out, plan, main)


def _holds_other(out: Path) -> bool:
    """``out`` holds something besides the lock file."""
    return out.exists() and any(p.name != LOCK_FILE for p in out.iterdir())


def _refuse_other(out: Path) -> None:
    raise OutputExistsError(f"{out}: exists and holds no cross-validation; choose another --out")


def _open_run_locked(out: Path, plan: _Plan, main: bool) -> None:
    from livseg.data.splits import save_splits

    path = out / SPLITS_FILE
    if path.is_file():
        diff = _differences(path, plan)
        if diff:
            raise OutputExistsError(
                f"{out}: holds a cross-validation that differs in {', '.join(diff)}; "
                "choose another --out (the same command continues the one there)"
            )
        logger.info("%s: continuing the cross-validation there", out)
        return
    if _holds_other(out):
        _refuse_other(out)
    if main:
        save_splits(
            plan.splits,
            path,
            seed=plan.seed,
            n_folds=len(plan.splits),
            configs=_config_docs(plan),
        )


# --- one fold ---------------------------------------------------------------------------------
def _rank() -> int:
    """This process's torchrun rank (0 without torchrun)."""
    from livseg.distributed import env_info

    return env_info().rank


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _train_model(plan: _Plan, config: Config, split: Split, run_dir: Path, opts: _Options) -> dict:
    """Train (or resume, or find finished) one configuration of a fold; its record."""
    from livseg.train import train

    timing_file = run_dir / TIMING_FILE
    resumed = run_dir.exists()
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = train(
        config,
        list(plan.cases.values()),
        run_dir,
        split=split,
        cache=opts.cache,
        device=opts.device,
        resume=True,
        progress=opts.progress,
        cache_progress=opts.cache_progress,
    )
    if timing_file.is_file():  # trained by an earlier call: keep its measurement
        timing = json.loads(timing_file.read_text(encoding="utf-8"))
    else:
        timing = {
            "cpu_minutes": round((_cpu_seconds() - cpu) / 60, 3),
            "wall_minutes": round((time.perf_counter() - wall) / 60, 3),
            "resumed": resumed,
        }
        if _rank() == 0:
            write_text_atomic(timing_file, json.dumps(timing) + "\n", overwrite=True)
    return {
        "config": config.name,
        "stage": stage_of(config),
        "checkpoint": str(result.checkpoint),
        "train_cases": list(result.train_cases),
        **timing,
    }


def _prediction(out: Path, fold: int, cascade: str, case_id: str) -> Path:
    from livseg.infer.case import SaveOptions, output_paths

    folder = out / f"fold{fold}" / "predictions" / cascade
    return output_paths(case_id, folder, SaveOptions(overlay=False))["labels"]


def _score(
    plan: _Plan,
    out: Path,
    cascade: str,
    fold_of: dict[str, int],
    known: dict[str, CaseResult] | None = None,
) -> EvaluationResult:
    """Score the written predictions of ``cascade`` for the cases ``fold_of`` names.

    Cases in ``known`` (scored earlier in this call, from the same files) are not scored again.
    """
    from livseg.metrics import EvaluationResult, evaluate_case, summarize
    from livseg.metrics.evaluate import CasePair, load_pair

    known = known or {}
    pairs = [
        CasePair(cid, _prediction(out, k, cascade, cid), plan.cases[cid].label)
        for cid, k in fold_of.items()
    ]
    cases = tuple(
        known[p.case_id] if p.case_id in known else evaluate_case(*load_pair(p), case_id=p.case_id)
        for p in pairs
    )
    return EvaluationResult(
        cases=cases,
        summary=summarize(cases),
        pairs=tuple((str(p.pred), str(p.ref)) for p in pairs),
    )


def _segment_fold(
    plan: _Plan, k: int, liver: Config, models: dict[str, dict], out: Path, device: str | None
) -> tuple[dict[str, float], EvaluationResult]:
    """Segment fold ``k``'s held-out cases with ``liver``'s cascade and score them.

    Returns:
        Seconds per case (reading, segmenting and writing) and the fold's scores.
    """
    from livseg.infer import Cascade, segment_case
    from livseg.metrics import write_results

    tumour, coarse = plan.tumour, plan.coarse
    cascade = Cascade.load(
        liver_model=models[liver.name]["checkpoint"],
        tumour_model=models[tumour.name]["checkpoint"] if tumour is not None else None,
        coarse_model=models[coarse.name]["checkpoint"] if coarse is not None else None,
        # livseg's cascade with a coarse stage, else the papers': every stage's folder is
        # given, so no shipped model is ever used
        paper=coarse is None,
        tumour=tumour is not None,
        device=device or "auto",
    )
    folder = _prediction(out, k, liver.name, "x").parent
    seconds = {}
    for cid in plan.splits[k]["val"]:
        done = segment_case(
            cascade, plan.cases[cid].image, folder, overlay=False, overwrite=True, name=cid
        )
        seconds[cid] = round(sum(done.timings.values()), 3)
        logger.info("fold %d: %s segmented by %s in %.1f s", k, cid, liver.name, seconds[cid])
    result = _score(plan, out, liver.name, {cid: k for cid in plan.splits[k]["val"]})
    write_results(result, out / f"fold{k}" / "scores" / liver.name, overwrite=True)
    return seconds, result


def _run_fold(
    plan: _Plan, k: int, out: Path, opts: _Options, scored: dict[str, dict[str, CaseResult]]
) -> None:
    """Train fold ``k``'s models, segment and score its held-out cases (skipped when done).

    The case results are added to ``scored[cascade][case_id]``.
    """
    from livseg.distributed import barrier

    fold_dir = out / f"fold{k}"
    if (fold_dir / FOLD_FILE).is_file():
        logger.info("fold %d: finished earlier (%s); skipping", k, fold_dir / FOLD_FILE)
        return
    split = plan.splits[k]
    logger.info(
        "fold %d (folds 0-%d): training on %d cases, held out: %s",
        k,
        len(plan.splits) - 1,
        len(split["train"]),
        ", ".join(split["val"]),
    )
    models = {
        c.name: _train_model(plan, c, split, fold_dir / "models" / c.name, opts)
        for c in plan.configs
    }
    if _rank() == 0:
        seconds = {}
        for liver in plan.livers:
            seconds[liver.name], result = _segment_fold(plan, k, liver, models, out, opts.device)
            scored.setdefault(liver.name, {}).update({c.case_id: c for c in result.cases})
        doc = {"fold": k, **split, "models": list(models.values()), "segment_seconds": seconds}
        write_text_atomic(fold_dir / FOLD_FILE, json.dumps(doc, indent=1) + "\n", overwrite=True)
    barrier()


# --- pooled results ---------------------------------------------------------------------------
def _cascade_doc(
    plan: _Plan, liver: Config, result: EvaluationResult, fold_of: dict[str, int], folds: list
) -> dict[str, Any]:
    """The ``cascades`` entry of ``cv_summary.json`` for one liver configuration."""
    from livseg.metrics import summarize

    per_fold = [
        summarize([c for c in result.cases if fold_of[c.case_id] == k])
        for k in range(len(plan.splits))
    ]
    return {
        "liver_config": liver.name,
        "tumour_config": plan.tumour.name if plan.tumour is not None else None,
        "scored": "liver and tumour" if plan.tumour is not None else "liver only",
        "summary": result.summary,
        "folds": per_fold,
        "cases": [{"fold": fold_of[str(r["case"])], **r} for r in result.rows()],
        "segment_seconds": {
            cid: s for f in folds for cid, s in f["segment_seconds"][liver.name].items()
        },
    }


def _pool(plan: _Plan, out: Path, scored: dict[str, dict[str, CaseResult]]) -> CVResult:
    """Pool every held-out case's scores; write the pooled results and ``cv_summary.json``.

    Cases of folds finished by an earlier call are scored again from their predictions.
    """
    from livseg.metrics import DEFAULT_PENALTY, DEFINITIONS_VERSION, write_results

    main = _rank() == 0
    held_out = {cid: k for k, s in enumerate(plan.splits) for cid in s["val"]}
    fold_of = {cid: held_out[cid] for cid in plan.cases if cid in held_out}  # in case order
    folds = [
        json.loads((out / f"fold{k}" / FOLD_FILE).read_text(encoding="utf-8"))
        for k in range(len(plan.splits))
    ]
    scores, cascades = {}, {}
    for liver in plan.livers:
        scores[liver.name] = _score(plan, out, liver.name, fold_of, scored.get(liver.name))
        cascades[liver.name] = _cascade_doc(plan, liver, scores[liver.name], fold_of, folds)
        if main:
            write_results(scores[liver.name], out / "scores" / liver.name, overwrite=True)
        _log_summary(liver.name, scores[liver.name], len(plan.splits))
    models = [
        {"fold": f["fold"], **m, "checkpoint": os.path.relpath(m["checkpoint"], out)}
        for f in folds
        for m in f["models"]
    ]
    doc = {
        "format": CV_FORMAT,
        "folds": len(plan.splits),
        "seed": plan.seed,
        "definitions_version": DEFINITIONS_VERSION,
        "penalty": DEFAULT_PENALTY,
        "resolution": "original image geometry of each case (whole cascade, as livseg segment)",
        "splits": list(plan.splits),
        "models": models,
        "cascades": cascades,
    }
    if main:
        write_text_atomic(out / SUMMARY_FILE, json.dumps(doc, indent=1) + "\n", overwrite=True)
    return CVResult(out=out, splits=plan.splits, scores=scores, summary_file=out / SUMMARY_FILE)


def _log_summary(cascade: str, result: EvaluationResult, folds: int) -> None:
    s = result.summary
    logger.info(
        "cross-validation %s (%d cases, %d folds, original resolution): liver Dice per case "
        "%.4f, ASSD %.2f mm; tumour Dice per case %.4f, global %.4f",
        cascade,
        len(result.cases),
        folds,
        s["liver_dice_per_case"],
        s["liver_assd"],
        s["tumor_dice_per_case"],
        s["tumor_dice_global"],
    )


# --- entry point --------------------------------------------------------------------------------
def cross_validate(
    configs: Sequence[Config],
    data: str | os.PathLike,
    out: str | os.PathLike,
    folds: int = 5,
    *,
    seed: int = 0,
    extra: str | os.PathLike | None = None,
    device: str | None = None,
    cache: str | os.PathLike | None = None,
    progress: Callable[..., Any] | None = None,
    cache_progress: Callable[..., Any] | None = None,
    only_folds: Sequence[int] | None = None,
) -> CVResult | None:
    """Cross-validate cascades by patient, scored at each case's original resolution.

    See the module docstring for the procedure, the stages, the output folder and resuming.
    ``cv_summary.json`` holds ``format`` (``livseg-cv-2``), ``folds``, ``seed``,
    ``definitions_version``, ``penalty``, ``resolution``, ``splits``, ``models`` (per fold and
    configuration: ``config``, ``stage``, ``checkpoint`` relative to ``out``, ``train_cases``,
    ``cpu_minutes``, ``wall_minutes``, ``resumed``) and ``cascades``: per liver configuration
    ``liver_config``, ``tumour_config``, ``scored``, ``summary`` (pooled LiTS summary, keys of
    :func:`livseg.metrics.summarize`), ``folds`` (the summary of each fold's cases), ``cases``
    (per-case rows of :data:`livseg.metrics.lits.CASE_COLUMNS` with their ``fold``) and
    ``segment_seconds`` per case.

    Args:
        configs: Resolved configurations (:func:`load_stage_configs`): one or more liver stages,
            at most one tumour stage, unique names.
        data: Dataset folder or list file with labels (:func:`livseg.io.datasets.discover_cases`).
        out: Cross-validation folder (created; an unfinished one with the same settings is
            continued).
        folds: Number of folds, 2 <= folds <= number of patients.
        seed: Seed of the fold assignment (the shipped models' card uses 0).
        extra: Dataset folder or list file of training-only cases: every fold trains on them
            too, none is held out or scored (e.g. a case whose geometry is not trustworthy).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` for training (default each
            configuration's ``train.device``) and segmenting (default ``auto``).
        cache: Slice-cache root shared by the folds (default ``out/cache``).
        progress: Training progress callback (see :func:`livseg.train.train`).
        cache_progress: Progress wrapper for building the slice cache.
        only_folds: Run these folds only (default all), e.g. one fold per machine or process
            into a shared ``out`` (as nnU-Net trains a fold per call); the results are pooled
            by whichever call finds every fold finished.

    Returns:
        A :class:`CVResult`, or None when ``only_folds`` left some fold unfinished.

    Raises:
        ConfigError: No liver configuration, several tumour ones, duplicate names, a stage whose
            target and pipeline disagree.
        OutputExistsError: ``out`` holds something else than this cross-validation.
        LivsegError: Bad ``folds``, dataset problems, training or segmenting errors.
    """
    from livseg.distributed import barrier

    out = Path(out)
    plan = _make_plan(configs, data, folds, seed, extra)
    run = _folds_to_run(only_folds, len(plan.splits))
    _open_run(out, plan, _rank() == 0)
    barrier()
    opts = _Options(
        device=device,
        cache=Path(cache) if cache is not None else out / "cache",
        progress=progress,
        cache_progress=cache_progress,
    )
    scored: dict[str, dict[str, CaseResult]] = {}
    for k in run:
        _run_fold(plan, k, out, opts, scored)
    left = [k for k in range(len(plan.splits)) if not (out / f"fold{k}" / FOLD_FILE).is_file()]
    if left:
        logger.info(
            "fold(s) %s not finished yet: the results are pooled once every fold is",
            ", ".join(map(str, left)),
        )
        return None
    return _pool(plan, out, scored)


def _folds_to_run(only: Sequence[int] | None, n: int) -> list[int]:
    """The fold indices to run (all by default); a bad index is a :class:`LivsegError`."""
    if not only:
        return list(range(n))
    bad = sorted({int(k) for k in only if not 0 <= int(k) < n})
    if bad:
        raise LivsegError(f"--fold {bad[0]}: the folds are 0-{n - 1}")
    return sorted({int(k) for k in only})
