"""Position-independent reuse of document KV: RoPE relocation, the segment store, request spans."""
