"""Image measures shared by training (the reward-hacking guard) and evaluation: image checks, the CLIP
vision tower's pixels, SSIM and LPIPS-miniCLIP. Below training and evaluation, so both may import it."""
