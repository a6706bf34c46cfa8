"""Traffic analytics on tracked objects: counting lines, polygon zones, ground-plane speed, time bins.

``geometry`` parses the shapes of the config (pixels or fractions of the frame) and the
ground-plane homography; ``counting`` turns the tracks of the blob stage into line crossings,
zone members and speeds; ``bins`` sums them per time bin into the rows of
``analytics.csv``; ``draw`` paints them on the preview; ``report`` makes the HTML page of a run.
"""
