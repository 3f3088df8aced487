"""Channel and layer pruning: masks, beta folding, compaction."""
