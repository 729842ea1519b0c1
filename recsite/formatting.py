"""How numbers read wherever people see them (admin pages, reports, gate reasons): one formatter each."""


def number(value) -> str:
    """A metric or score: at most 4 decimals, integers as they are, "—" when there is none."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}"


def duration(seconds: float | None) -> str:
    """4.814395558 → "4.8 s"; 312 → "5 min 12 s"."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def size(octets: int | None) -> str:
    """Bytes as B, kB or MB (powers of 1000, as the units say)."""
    if octets is None:
        return "—"
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if octets >= scale:
            return f"{octets / scale:.1f} {unit}"
    return f"{octets} B"
