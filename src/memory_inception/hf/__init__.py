"""The transformers integration: attention registration, `inject`, sessions, scoring, the text helpers, model
loading."""
