"""Evaluation math, plain PyTorch / NumPy (no Ray, MLflow or KFP).

* `lethe.evaluation.reconstruction`: image-to-image families, original vs unlearned vs oracle on
  held-out images under the inpainting / outpainting masks (PSNR, SSIM, FD, embedding cosine, MIA);
* `lethe.evaluation.samples`: generator families, samples of the unlearned generator (flagged share,
  FD, featnet class score, the latent PGD attack).

The pipeline's evaluate step (lethe.pipeline) calls into these modules.
"""
