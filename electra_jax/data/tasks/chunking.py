class ChunkingTask: pass
