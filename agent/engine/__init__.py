"""Engine: the store of recent history, PromQL, rule loading/evaluation/alert state, templates."""
