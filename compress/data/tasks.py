"""GLUE task specifications: where each task's files live, which columns hold what, and
which metrics it reports.

Two sources must give identical examples: a folder in the standard GLUE layout
(`SST-2/train.tsv`, `MNLI/dev_matched.tsv`, ...) and the hub dataset `nyu-mll/glue`.
So `labels` lists the TSV label strings in the hub's integer order: index i in `labels`
is hub label i (MNLI: 0 entailment, 1 neutral, 2 contradiction).

Main metric, per GLUE convention (the leaderboard averages two numbers for MRPC, QQP and
STS-B; we report one): accuracy for SST-2, MNLI, QNLI, RTE and WNLI; F1 for MRPC and QQP
(the classes are unbalanced, which is why GLUE reports F1 there); Matthews correlation for
CoLA; Pearson for STS-B. For MNLI the main metric is read on the first eval split
(`validation_matched`), as in the paper's tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.errors import UserError

HUB_LABEL_COLUMN = "label"  # every nyu-mll/glue config names its label column "label"


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to load, train on and score one GLUE task."""

    name: str  # "sst2"
    glue_dir: str  # folder in a GLUE-layout dir: "SST-2"
    text_columns: tuple[str, ...]  # TSV header names of the one or two text fields
    label_column: str  # TSV header name of the label
    labels: tuple[str, ...] | None  # TSV label strings in hub class-index order; None = regression
    train_file: str  # "train.tsv"
    eval_files: dict[str, str] = field(hash=False)  # split name -> file in glue_dir
    hub_config: str  # config name in nyu-mll/glue
    hub_text_columns: tuple[str, ...]  # text column names in the hub dataset
    hub_eval_splits: dict[str, str] = field(hash=False)  # our split name -> hub split name
    metrics: tuple[str, ...]  # names understood by compress.data.metrics
    main_metric: str  # the one reported as "the" task metric
    # Column names for header-less TSVs (CoLA); None means the first row is the header.
    tsv_header: tuple[str, ...] | None = None

    @property
    def num_labels(self) -> int:
        """Number of model outputs: classes, or 1 for regression."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a float score, no classes)."""
        return self.labels is None

    @property
    def main_eval_split(self) -> str:
        """The eval split the main metric is read on (the first one listed)."""
        return next(iter(self.eval_files))


_DEV = {"validation": "dev.tsv"}
_HUB_DEV = {"validation": "validation"}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            name="cola",
            glue_dir="CoLA",
            text_columns=("sentence",),
            label_column="label",
            labels=_BINARY,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="cola",
            hub_text_columns=("sentence",),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("matthews",),
            main_metric="matthews",
            tsv_header=("source", "label", "author_label", "sentence"),
        ),
        TaskSpec(
            name="sst2",
            glue_dir="SST-2",
            text_columns=("sentence",),
            label_column="label",
            labels=_BINARY,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="sst2",
            hub_text_columns=("sentence",),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        TaskSpec(
            name="mrpc",
            glue_dir="MRPC",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            labels=_BINARY,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="mrpc",
            hub_text_columns=("sentence1", "sentence2"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy", "f1"),
            main_metric="f1",
        ),
        TaskSpec(
            name="qqp",
            glue_dir="QQP",
            text_columns=("question1", "question2"),
            label_column="is_duplicate",
            labels=_BINARY,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="qqp",
            hub_text_columns=("question1", "question2"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy", "f1"),
            main_metric="f1",
        ),
        TaskSpec(
            name="stsb",
            glue_dir="STS-B",
            text_columns=("sentence1", "sentence2"),
            label_column="score",
            labels=None,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="stsb",
            hub_text_columns=("sentence1", "sentence2"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("pearson", "spearman"),
            main_metric="pearson",
        ),
        TaskSpec(
            name="mnli",
            glue_dir="MNLI",
            text_columns=("sentence1", "sentence2"),
            label_column="gold_label",
            labels=("entailment", "neutral", "contradiction"),
            train_file="train.tsv",
            eval_files={
                "validation_matched": "dev_matched.tsv",
                "validation_mismatched": "dev_mismatched.tsv",
            },
            hub_config="mnli",
            hub_text_columns=("premise", "hypothesis"),
            hub_eval_splits={
                "validation_matched": "validation_matched",
                "validation_mismatched": "validation_mismatched",
            },
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        TaskSpec(
            name="qnli",
            glue_dir="QNLI",
            text_columns=("question", "sentence"),
            label_column="label",
            labels=_NLI2,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="qnli",
            hub_text_columns=("question", "sentence"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        TaskSpec(
            name="rte",
            glue_dir="RTE",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            labels=_NLI2,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="rte",
            hub_text_columns=("sentence1", "sentence2"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
        TaskSpec(
            name="wnli",
            glue_dir="WNLI",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            labels=_BINARY,
            train_file="train.tsv",
            eval_files=dict(_DEV),
            hub_config="wnli",
            hub_text_columns=("sentence1", "sentence2"),
            hub_eval_splits=dict(_HUB_DEV),
            metrics=("accuracy",),
            main_metric="accuracy",
        ),
    ]
}


def get_task(name: str) -> TaskSpec:
    """Return the spec of a GLUE task by its lower-case name ("sst2", "mnli", ...)."""
    try:
        return TASKS[name]
    except KeyError:
        valid = ", ".join(TASKS)
        raise UserError(f"task: unknown task {name!r}; valid tasks: {valid}") from None
