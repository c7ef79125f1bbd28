"""The project's mathematics that every layer uses (no model, no data): maths/gaussian.py, the Gaussian algebra in
numpy only; maths/map_prior.py, meta-analytic-predictive priors from historical control arms, in numpy and scipy."""
