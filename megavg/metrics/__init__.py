"""Video quality metrics shared by training's evaluation (:mod:`megavg.tasks.dcaev_eval`, the perceptual
loss of :mod:`megavg.tasks.dcaev_recon`) and ``python -m megavg.eval``: PSNR and SSIM
(:mod:`megavg.metrics.video`), VGG16 LPIPS (:mod:`megavg.metrics.perceptual`)."""
