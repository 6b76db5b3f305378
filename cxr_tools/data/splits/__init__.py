"""The two kinds of split a cache carries: patient-disjoint train / val / test (``patients``) and class-disjoint
meta-splits with disjoint image pools (``meta``); docs/science.md, "What is disjoint from what"."""
