"""seqio registrations: `import tasks` registers mtf's tasks and mixtures.

Always: the embedded `mini_xp3` mixture and `mini_xp3_heldout` (tasks/mini_xp3.py).
When XP3_DIR points at an xP3 tree: `xp3_<lang>` and the `xp3` mixtures (tasks/xp3.py).
Evaluation sets, Flores and x-LLaMA data register when their *_DIR variables are set
(tasks/heldout.py, tasks/crosslingual.py). Add your own task in a module here and import
it below, in any order: mixtures that name tasks of a later module are registered last.
"""

from mtf.data import seqio_tasks
from tasks import crosslingual, heldout, mini_xp3, xp3  # noqa: F401

seqio_tasks.register_pending_mixtures()
