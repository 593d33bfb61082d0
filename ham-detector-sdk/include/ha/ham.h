/* ham: QNX's include path. `#include <ha/ham.h>` works unchanged with `pkg-config --cflags ham`
   (or `-I PREFIX/include`); the declarations are in <ham.h>. */
#include "../ham.h"
