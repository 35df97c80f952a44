"""Python-side shims of the device modules (torch.cuda, torch.mps) for emulated devices."""
