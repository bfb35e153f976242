"""The benchmark: what to compare (`targets`, `random_target`), how each variant runs (`runners`,
the packed fast path `fast_path` and its GPU kernel `varlen_attention`), the timing loop
(`timing`), where the time goes (`profile`) and the output (`report`)."""
