from redknot_sglang.profile.cli import main

import sys

sys.exit(main())
