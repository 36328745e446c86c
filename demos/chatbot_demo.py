"""A chatbot with long-term memory in a few lines: run it twice and it remembers.

    python demos/chatbot_demo.py [--db chat.db]
"""

import argparse

from agent import MemoryAgent
from memory import Memory, Summarizer, load_generator

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--db", default="chat.db")
ap.add_argument("--user", default="demo-user")
args = ap.parse_args()

generator = load_generator("transformers")  # offline SmolLM2; or "openai:MODEL" with base_url=...
agent = MemoryAgent(Memory(args.db, summarizer=Summarizer(generator)), generator)
for message in ["Hi! My dog is called Pixel and he loves the beach.", "What is my dog called?"]:
    answer = agent.chat(args.user, message)
    print(f"you> {message}\nbot> {answer.text}   (memories: {', '.join(answer.turn_ids) or '-'})")
agent.end_session(args.user)
