"""`sam3-adapt review`: human verification in the browser (the paper's MV and EV questions), written as a
calibration sample, an HQ SA-Co file and agreement statistics."""
