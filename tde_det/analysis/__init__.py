"""Analysis on top of a trained model, apart from the LVIS evaluation that reproduces lvis-api
(:mod:`tde_det.evaluation`): the one-pass α / NorCal γ sweep (:mod:`.alpha_sweep`, with its batched
box inference and mask pasting), Grad-CAM per detection (:mod:`.cam`) and the figures
(:mod:`.figures`). Imports go one way: analysis → evaluation, modeling; never back."""
