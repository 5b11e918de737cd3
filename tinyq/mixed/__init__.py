"""Mixed precision: per-layer sensitivity, the multiple-choice knapsack, plans under a size budget."""
