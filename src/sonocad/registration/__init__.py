"""Whole-slide-image cancer outlines mapped onto the ultrasound needle tract (JMIR 2026).

A pathologist outlines cancer on the biopsy core in QuPath; the outlines are mapped onto the
pre-fire ultrasound image along the needle tract, and the tract crop with its mask is written
as a segmentation dataset (docs/registration.md). Modules, one job each: `fields` (what
describes a biopsy), `inputs` (reading its files), `geometry` (the mapping), `runner`
(registering and writing), `synthetic` (the example series). Nothing is imported here, so
that the command line can read `fields` without loading OpenCV.
"""
