package engine

import (
	"os"
	"testing"

	"github.com/cryo-dev/cryo/internal/testmain"
)

func TestMain(m *testing.M) { os.Exit(testmain.Run(m)) }
