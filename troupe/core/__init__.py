"""The bottom layer: errors, the messages that cross every layer (chat, processes, turns), and the plain
logic the rest wraps (caller identity, persona files, prompt assembly, schedules, supervision maths, pool
sizing). Nothing here imports Ray, a database or a network client."""
