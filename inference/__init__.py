"""The sampling engine: how a built model (models/) is compiled, sampled and stored.

sampling   SamplerSettings, seed streams, sample_all (prior, posterior, predictive, log-likelihood)
compile    nutpie compile with the on-disk cache and the fused log density; every patch of another
           library's internals, version-guarded
kernels    the fused log density and gradient of the marginal trajectory models (numba)
marginal   after sampling a marginal model: participant effects, pointwise log-likelihood, predictions
jobs       several models fitted side by side, one worker process each
idata_io   InferenceData I/O with provenance
"""

from .sampling import SAMPLERS, SamplerSettings, sample_all, sample_posterior, seed_streams

__all__ = ["SAMPLERS", "SamplerSettings", "sample_all", "sample_posterior", "seed_streams"]
