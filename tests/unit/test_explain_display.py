"""explain's table: probabilities that are never a misleading 0.00, newlines escaped once, special tokens whole."""

from hf_clm.evaluation.explain import Explanation, Position, format_explanation
from hf_clm.evaluation.scoring import Scores


def test_table_shows_small_probabilities_newlines_and_special_tokens():
    positions = [Position(position=0, context="the", target="\n", target_id=1, probability=8.8e-05, rank=309,
                          top=[("<|endoftext|>", 0.4), (" cat", 0.0004)], loss=9.3)]
    table = format_explanation(Explanation(["the", "\n"], positions, Scores(nll=9.3, tokens=1)))
    row = table.splitlines()[4]
    assert "'\\n'" in row and "'\\\\n'" not in row  # one backslash, as the user would type it
    assert "8.8e-05" in row and "0.000" not in row and "4.0e-04" in row
    assert "'<|endoftext|>' 0.400" in row
    assert table.splitlines()[0] == "tokens: the | \\n"
    assert "over 1 prediction," in table
