"""The data shipped with the package (persona descriptors and statements, open-ended prompts, the CAA A/B
sets, HARDMath and PHYSICS), loaded offline. Below `methods`: CAA pairs and calibration read it too."""
