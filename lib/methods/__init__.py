"""One module per paper's method: the part that is genuinely that paper's."""
