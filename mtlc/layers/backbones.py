"""Named backbones expanded into the layer vocabulary, without torch.

`resnet50` at output stride 8 becomes the stem (`conv1`, `bn1`, `relu`, `maxpool`) and the
blocks `layer1.0` … `layer4.2`, each an ordinary vocabulary layer (`bottleneck(256,
stride=2)`) that carries torchvision's module name. The spec's stages then pick parts in
order (`stem`, `layer1`, or a single block `layer3.2`), so the fx graph, labels, profile,
pictures and diffs see the blocks as any other layer, and a torchvision or timm ResNet
state dict loads by name into every copy of a stage.

Output stride follows torchvision's `replace_stride_with_dilation`: a dilated stage keeps
stride 1 and multiplies the dilation by the stride it dropped; its first block still uses
the previous dilation (for the basic block, on its first 3×3 conv, as timm does).
"""

from __future__ import annotations

from dataclasses import dataclass

from mtlc.layers.vocab import Layer, make_layer

# name -> (block layer, blocks per stage)
RESNETS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("resblock", (2, 2, 2, 2)),
    "resnet34": ("resblock", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# output stride -> which of layer2, layer3, layer4 trade their stride for dilation
DILATE: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}
WIDTHS = (64, 128, 256, 512)
STEM = "stem"


@dataclass(frozen=True)
class Backbone:
    """A backbone as ordered parts: `stem`, then every block `layerK.i`."""

    name: str
    parts: dict[str, list[Layer]]  # part name -> its layers (module names set)

    @property
    def groups(self) -> dict[str, list[str]]:
        """Names a stage may use -> the parts they stand for (`layer2` -> its blocks)."""
        out: dict[str, list[str]] = {}
        for part in self.parts:
            out.setdefault(part.split(".")[0], []).append(part)
            if "." in part:
                out[part] = [part]
        return out


def _named(text: str, module: str, **kwargs) -> Layer:
    layer = make_layer(text, (), kwargs)
    return Layer(layer.name, layer.args, module)


def resnet(name: str, output_stride: int = 32) -> Backbone:
    """torchvision's ResNet `name` (no avgpool, no fc) at `output_stride` 8, 16 or 32."""
    block, counts = RESNETS[name]
    parts: dict[str, list[Layer]] = {
        STEM: [
            _named("conv", "conv1", out=64, k=7, stride=2, padding=3, bias=False),
            _named("bn", "bn1"),
            _named("relu", "relu"),
            _named("maxpool", "maxpool", k=3, stride=2, padding=1),
        ]
    }
    dilation = 1
    for k, (width, count) in enumerate(zip(WIDTHS, counts)):
        stride = 1 if k == 0 else 2
        previous = dilation
        if k > 0 and DILATE[output_stride][k - 1]:
            dilation, stride = dilation * stride, 1
        for i in range(count):
            module = f"layer{k + 1}.{i}"
            first = i == 0
            if block == "bottleneck":
                layer = _named(
                    block,
                    module,
                    planes=width,
                    stride=stride if first else 1,
                    dilation=previous if first else dilation,
                )
            else:
                layer = _named(
                    block,
                    module,
                    out=width,
                    stride=stride if first else 1,
                    dilation=dilation,
                    first_dilation=previous if first and previous != dilation else None,
                )
            parts[module] = [layer]
    return Backbone(name, parts)
