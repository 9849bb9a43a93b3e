"""show_source: a notebook cell shows the code it talks about, straight from the package."""
import inspect

from IPython.display import Code, display


def show_source(*objects):
    """Display the source code of functions or classes, with syntax colours."""
    display(Code("\n\n".join(inspect.getsource(o) for o in objects), language="python"))
