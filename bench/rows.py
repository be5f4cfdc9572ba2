"""One row of the benchmark's table, and the target it is judged by, each declared once.

A row compares this package with something (its limit, the conventional way, another setting) in one
``ratio``, higher being better for the package. Its ``target`` says what the ratio must reach and
renders the table's target text; whether the row met it is computed from that one target:

* :class:`AtLeast` ``(2)``: "≥ 2", met when the ratio is at least 2;
* :class:`AtMost` ``(1.5)``: "≤ 1.5", met when the ratio is at most 1.5 (a ratio of costs);
* :class:`Within` ``(1.3)``: "≥ 0.77 (within 1.3×)", met when the package takes at most 1.3 times
  what its limit takes (the ratio is limit / package);
* :class:`FiguresAtMost`: a target over the row's named figures rather than its ratio (quality in a
  time: "≤ 2.15 bits/char within nanoGPT's wall");
* :class:`About` ``(1, part, whole, relative, absolute)``: "≈ 1", met when the figure ``part`` is at
  most ``whole`` plus a relative and an absolute slack (bytes a task reads beyond its share);
* :class:`Basis`: no target, only what the comparison holds equal ("equal wall time (89 s)");
* ``None``: no target (the column stays empty, ``met`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Target:
    """What a row must reach: its text in the table and its verdict on a row."""

    @property
    def text(self) -> str:
        raise NotImplementedError

    def verdict(self, row: Row) -> bool | None:
        raise NotImplementedError


class RatioTarget(Target):
    """A target on the row's ratio alone."""

    def met(self, ratio: float) -> bool:
        raise NotImplementedError

    def verdict(self, row: Row) -> bool | None:
        return None if row.ratio is None else self.met(row.ratio)


@dataclass(frozen=True)
class AtLeast(RatioTarget):
    """The ratio is at least ``bound`` ("≥ 2")."""

    bound: float

    @property
    def text(self) -> str:
        return f"≥ {self.bound:g}"

    def met(self, ratio: float) -> bool:
        return ratio >= self.bound


@dataclass(frozen=True)
class AtMost(RatioTarget):
    """The ratio is at most ``bound`` ("≤ 1.5"): for a ratio of costs, such as memory at 10× the text."""

    bound: float

    @property
    def text(self) -> str:
        return f"≤ {self.bound:g}"

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound


@dataclass(frozen=True)
class Within(RatioTarget):
    """The package takes at most ``factor`` times what its limit takes; the ratio is limit / package,
    so it is met at a ratio of at least 1 / factor ("≥ 0.77 (within 1.3×)")."""

    factor: float

    @property
    def text(self) -> str:
        return f"≥ {1 / self.factor:.2f} (within {self.factor:g}×)"

    def met(self, ratio: float) -> bool:
        return ratio * self.factor >= 1


@dataclass(frozen=True)
class Ceiling:
    """One of the row's figures at most a number (``words`` its unit: "≤ 2.15 bits/char") or at most
    another of its figures (``words`` that figure's name: "within nanoGPT's wall")."""

    figure: str
    at_most: float | str
    words: str

    @property
    def text(self) -> str:
        return f"within {self.words}" if isinstance(self.at_most, str) else f"≤ {self.at_most:g} {self.words}"

    def met(self, figures: dict[str, float]) -> bool:
        bound = figures[self.at_most] if isinstance(self.at_most, str) else self.at_most
        return figures[self.figure] <= bound


@dataclass(frozen=True)
class FiguresAtMost(Target):
    """Every ceiling holds over the row's ``figures`` (not its ratio): e.g. bits per character at
    most 2.15 and the wall time at most the other program's."""

    ceilings: tuple[Ceiling, ...]

    @property
    def text(self) -> str:
        return " ".join(ceiling.text for ceiling in self.ceilings)

    def verdict(self, row: Row) -> bool | None:
        return all(ceiling.met(row.figures) for ceiling in self.ceilings)


@dataclass(frozen=True)
class About(Target):
    """"≈ value" for a ratio of two of the row's figures, ``part`` / ``whole``, judged over the figures:
    met when part ≤ value × whole × (1 + relative) + absolute, ``absolute`` being in the figures' own
    unit (the bytes of a boundary search, say), so no bound on the ratio alone; only an excess fails."""

    value: float
    part: str
    whole: str
    relative: float
    absolute: float

    @property
    def text(self) -> str:
        return f"≈ {self.value:g}"

    def verdict(self, row: Row) -> bool | None:
        return row.figures[self.part] <= self.value * (1 + self.relative) * row.figures[self.whole] + self.absolute


@dataclass(frozen=True)
class Basis(Target):
    """No target: what the comparison holds equal, shown in the target column ("equal steps (30)")."""

    description: str

    @property
    def text(self) -> str:
        return self.description

    def verdict(self, row: Row) -> bool | None:
        return None


@dataclass
class Row:
    """One comparison of the table. ``figures`` are what a :class:`FiguresAtMost` target judges (not
    written out); ``extra`` are figures written beside the row's keys (the A/B rows' bits per
    character, steps and wall seconds)."""

    stage: str
    what: str
    ratio: float | None
    target: Target | None
    context: str
    figures: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def target_text(self) -> str:
        return "" if self.target is None else self.target.text

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.verdict(self)

    def as_dict(self) -> dict[str, object]:
        """The row as ``bench/results.json`` holds it (and docs/hooks.py reads it)."""
        return {"stage": self.stage, "what": self.what, "ratio": self.ratio, "target": self.target_text,
                "met": self.met, **self.extra, "context": self.context}
