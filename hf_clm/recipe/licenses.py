"""What a model card may name: the license ids the Hugging Face Hub accepts (its license list, as
the Hub documents it for the ``license:`` field of a card), and git's rules for a branch name."""

from __future__ import annotations

import difflib
import re

HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())


def license_problem(value: str) -> str | None:
    """Why ``value`` is not a license id the Hub accepts (None when it is)."""
    if value in HUB_LICENSES:
        return None
    if value.lower() in HUB_LICENSES:
        return f"license {value!r} is spelt {value.lower()!r} on the Hub (lowercase)"
    close = difflib.get_close_matches(value.strip().lower(), sorted(HUB_LICENSES), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (e.g. apache-2.0, mit, cc-by-4.0, or 'other')"
    return f"license {value!r} is not a license id the Hub accepts{hint}"


# git check-ref-format: no "..", "@{", "//", control characters, space ~ ^ : ? * [ \; no component
# starting with "." or ending with ".lock"; not starting or ending with "/", not ending with "."
BAD_REF = re.compile(r"\.\.|@\{|//|[\x00-\x20\x7f~^:?*\[\\]|(^|/)\.|\.lock(/|$)|^/|/$|\.$")


def revision_problem(value: str) -> str | None:
    if value == "@" or BAD_REF.search(value):
        return (f"--revision {value!r} is not a valid git branch name (no '..', spaces, ~^:?*[\\, "
                f"'@{{', leading '.' or '/', trailing '/', '.' or '.lock'); e.g. main or experiment-1")
    return None
