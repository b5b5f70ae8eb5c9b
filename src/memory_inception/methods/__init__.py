"""Every steering method behind one interface: plain, visible prompting, CAA and Memory Inception.

A `Method` may change the conversation (prompting), install hooks (CAA), inject banks (MI), or several
(`Combined`). Evaluation code runs any method on any conversation through `methods.runners` (`generate`,
`score`, `statement_margin`) without special cases, and asks each method for its `cost`."""
