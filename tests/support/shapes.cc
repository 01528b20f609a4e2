#include "support/shapes.h"
