"""What a cancel removed and what it kept, and why: :class:`CancelReport`.

``Transfer.cancel()`` returns it, the CLI prints it, and the journal holds the same lists
as events (``cancel-removed``, ``cancel-removed-temp``, ``cancel-removed-dir``,
``cancel-kept``, ``cancel-kept-dir``), committed with CANCELLED. See ``docs/design.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CancelReport"]


@dataclass
class CancelReport:
    """The outcome of one :meth:`Transfer.cancel` call, entry by entry.

    Paths are destination paths (``str``, undecodable bytes as surrogate escapes).
    ``kept`` and ``kept_dirs`` map each path left in place to the reason. What an earlier
    cancel attempt that died part-way removed is not listed (``resumed_attempt`` says
    there was one). Sources are never touched and so never listed.
    """

    transfer: str
    #: destination files this transfer wrote, verified byte for byte, then removed
    removed: list[str] = field(default_factory=list)
    #: temp files of this transfer removed
    removed_temps: list[str] = field(default_factory=list)
    #: empty directories this transfer had created, removed
    removed_dirs: list[str] = field(default_factory=list)
    #: destination files left in place -> why
    kept: dict[str, str] = field(default_factory=dict)
    #: directories this transfer created but left in place -> why
    kept_dirs: dict[str, str] = field(default_factory=dict)
    #: an earlier cancel of this transfer died part-way (its removals are not listed)
    resumed_attempt: bool = False

    def summary(self) -> str:
        """One line: counts of what was removed and kept."""
        def n(k: int, one: str, many: str) -> str:
            return f"{k} {one if k == 1 else many}"

        parts = [f"removed {n(len(self.removed), 'published file', 'published files')}, "
                 f"{n(len(self.removed_temps), 'temp file', 'temp files')}, "
                 f"{n(len(self.removed_dirs), 'created directory', 'created directories')}"]
        if self.kept or self.kept_dirs:
            parts.append(f"kept {n(len(self.kept), 'file', 'files')} and "
                         f"{n(len(self.kept_dirs), 'directory', 'directories')}")
        if self.resumed_attempt:
            parts.append("finishing an earlier cancel that died part-way "
                         "(what it removed is not listed)")
        return "; ".join(parts)

    def lines(self, limit: int | None = None) -> list[str]:
        """The summary, then one line per kept entry with its reason (at most ``limit``)."""
        out = [self.summary()]
        kept = [f"kept {p!r}: {why}" for p, why in self.kept.items()]
        kept += [f"kept directory {p!r}: {why}" for p, why in self.kept_dirs.items()]
        if limit is not None and len(kept) > limit:
            more = len(kept) - limit
            kept = [*kept[:limit], f"... and {more} more (see the transfer's events)"]
        return out + kept
