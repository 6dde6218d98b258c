"""The digest of a persona's recent life that goes into its prompt: what it read (with its take),
fresh reflections, goals at risk, the latest journal lines and its last post. Most important first;
the prompt builder keeps as much as the persona's token budget has room for."""

from __future__ import annotations

from troupe.store import Store

AT_RISK = "At risk: "


async def life_digest(store: Store, persona: str) -> tuple[str, ...]:
    lines: list[str] = []
    read = await store.news_read(persona, limit=6)
    for item in read[:3]:
        lines.append(f"You read '{item.title}' ({item.url}). Your take: {item.take}")
    reflections = await store.recall(persona, subject="self", limit=3)
    lines.extend(f"Your reflection: {m.content}" for m in reflections if m.kind == "reflection")
    goals = await store.life_runs(persona, "goals", limit=1)
    if goals and goals[0].status == "completed" and AT_RISK in goals[0].output:
        lines.append("Your goals at risk: " + goals[0].output.split(AT_RISK, 1)[1].strip())
    journal = await store.life_runs(persona, "journal", limit=1)
    if journal and journal[0].status == "completed" and journal[0].output:
        lines.append(f"From your journal: {journal[0].output}")
    posts = await store.posts(persona, limit=1)
    if posts and posts[0].status != "blocked":
        lines.append(f"You posted: {posts[0].text}")
    for item in read[3:]:
        lines.append(f"You also read '{item.title}' ({item.url}).")
    return tuple(lines)
