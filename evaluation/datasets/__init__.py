"""Dataset readers: Oxford/Paris (txt + revisitop pkl, classic + revisited), protocols, VOC2010, Tiny-ImageNet, class folders."""
