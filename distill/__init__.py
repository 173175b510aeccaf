"""SwiftBrush v2 training: VSD with a LoRA fake teacher, clamped CLIP loss, weight merging."""
